"""Sensirion SHT3x-DIS (SHT30/31/35): temperature and relative humidity over I2C.

Single-shot measurements without clock stretching: the command starts a conversion, the
driver waits the datasheet's maximum duration, then reads temperature and humidity as two
big-endian words, each followed by a CRC-8 that is checked. References: Sensirion
"Datasheet SHT3x-DIS" (version 5, May 2018), sections 4.3-4.4, 4.9, 4.11-4.13, Table 4;
cross-checked with the Linux hwmon sht3x driver (same commands and wait times).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from agent.hardware.board import I2CDevice
from agent.hardware.sensors.base import Channel, Sensor, SensorError, Value
from agent.hardware.sensors.crc8 import SHT3X_INIT, crc8

log = logging.getLogger(__name__)

# ADDR pin low -> 0x44, high -> 0x45 (section 3, Table 7).
ADDRESSES = (0x44, 0x45)

# Single shot, clock stretching disabled (section 4.3, Table 9), with the maximum
# measurement duration of each repeatability at VDD 2.4-5.5 V (Table 4: 4 / 6 / 15 ms; below
# 2.4 V each is 0.5 ms longer, which MARGIN_S covers).
MEASURE: Dict[str, Tuple[bytes, float]] = {
    "high": (bytes([0x24, 0x00]), 0.015),
    "medium": (bytes([0x24, 0x0B]), 0.006),
    "low": (bytes([0x24, 0x16]), 0.004),
}
SOFT_RESET = bytes([0x30, 0xA2])  # section 4.9
READ_STATUS = bytes([0xF3, 0x2D])  # section 4.11, Table 17
# Soft reset time t_SR is at most 1.5 ms (Table 4).
SOFT_RESET_S = 0.0015
# On top of each datasheet maximum: the Edison's sleep can wake a little early relative to
# the sensor's own oscillator, and a read header sent too soon is NACKed.
MARGIN_S = 0.001
STATUS_HEATER_ON = 1 << 13  # Table 18

# Indirection so tests can observe the waits instead of sleeping.
_sleep = time.sleep


@dataclass(frozen=True)
class Sht31Options:
    bus: int = 6
    address: int = 0x44
    # high / medium / low: more repeatable readings take longer (15 / 6 / 4 ms).
    repeatability: str = "high"
    # Read the status register (with its CRC) after the soft reset: a cheap check that an
    # SHT3x answers at the address, since the part has no chip-id register.
    read_status: bool = True


def word(data: bytes, what: str) -> int:
    """The 16-bit word in data[0:2], after checking it against its CRC in data[2]."""
    expected = crc8(data[0:2], SHT3X_INIT)
    if data[2] != expected:
        raise SensorError("sht31 %s word 0x%02x%02x: CRC 0x%02x received, 0x%02x expected (noise on the bus?)"
                          % (what, data[0], data[1], data[2], expected))
    return (data[0] << 8) | data[1]


def temperature(raw: int) -> float:
    # Section 4.13: T[degC] = -45 + 175 * S_T / (2^16 - 1).
    return -45.0 + 175.0 * raw / 65535.0


def humidity(raw: int) -> float:
    # Section 4.13: RH[%] = 100 * S_RH / (2^16 - 1); the range is 0-100 by construction.
    return 100.0 * raw / 65535.0


class Sht31Sensor(Sensor):
    Options = Sht31Options
    _device: Optional[I2CDevice] = None
    status: Optional[int] = None

    @classmethod
    def check_options(cls, options: Sht31Options) -> List[Tuple[str, str]]:
        problems = []
        if options.address not in ADDRESSES:
            problems.append(("address", "0x%02x is not an SHT3x address: it answers at 0x44 (ADDR low) or 0x45 "
                                        "(ADDR high)" % options.address))
        if options.repeatability not in MEASURE:
            problems.append(("repeatability", "%r is not one of: high, medium, low" % options.repeatability))
        return problems

    @classmethod
    def channels(cls, options: Sht31Options) -> Tuple[Channel, ...]:
        return (Channel("temperature", "degC"), Channel("humidity", "%RH"))

    def setup(self) -> None:
        device = self.board.i2c(self.options.bus, self.options.address, chip="sht31")
        # A 2-byte command goes as one write: mraa sends the first byte as the SMBus command
        # and the rest as data, which on the wire is the command MSB then LSB.
        device.write(SOFT_RESET)
        _sleep(SOFT_RESET_S + MARGIN_S)
        if self.options.read_status:
            device.write(READ_STATUS)
            self.status = word(device.read(3), "status")
            log.debug("%s: SHT3x status register 0x%04x", self.name, self.status)
            if self.status & STATUS_HEATER_ON:
                log.warning("%s: the SHT3x heater is on after a soft reset: temperature will read high", self.name)
        self._device = device

    def read_all(self) -> Dict[str, Value]:
        assert self._device is not None, "setup() first"
        command, duration = MEASURE[self.options.repeatability]
        self._device.write(command)
        # Without clock stretching the part NACKs a read until the conversion is done
        # (section 4.4), so wait out the longest it may take.
        _sleep(duration + MARGIN_S)
        data = self._device.read(6)
        return {
            "temperature": temperature(word(data[0:3], "temperature")),
            "humidity": humidity(word(data[3:6], "humidity")),
        }
