"""TE Connectivity (MEAS) HTU21D(F): temperature and relative humidity over I2C.

The SHT21 / Si7021 family's protocol: one-byte commands, "no hold master" measurements
(the part NACKs a read until the conversion is done, so the driver waits the datasheet's
maximum), replies of MSB, LSB, CRC-8. The two low bits of the LSB are status, not data: bit 1
says whether the part measured temperature (0) or humidity (1). References: "HTU21D(F)
Sensor" datasheet (MEAS HPC199), sections "Electrical characteristics" (conversion times),
"Commands", "User register", "Communication protocol" and "Conversion of signal outputs".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from agent.hardware.board import I2CDevice
from agent.hardware.sensors.base import Channel, Sensor, SensorError, Value
from agent.hardware.sensors.crc8 import HTU21D_INIT, crc8

ADDRESS = 0x40  # fixed: the part has no address pin

# Commands (datasheet "Commands" table).
MEASURE_TEMPERATURE = 0xF3  # no hold master
MEASURE_HUMIDITY = 0xF5  # no hold master
WRITE_USER_REGISTER = 0xE6
READ_USER_REGISTER = 0xE7
SOFT_RESET = 0xFE
# "The soft reset takes less than 15 ms."
SOFT_RESET_S = 0.015
# On top of each datasheet maximum: a read sent before the conversion ends is NACKed.
MARGIN_S = 0.001

# User register bits 7 and 0 select the resolution, as "RH bits/T bits", with the maximum
# conversion times of each (datasheet "Electrical characteristics": RH 12/11/10/8 bit:
# 16/8/5/3 ms; T 14/13/12/11 bit: 50/25/13/7 ms).
RESOLUTIONS: Dict[str, Tuple[int, float, float]] = {
    #        user register bits, humidity max s, temperature max s
    "12/14": (0x00, 0.016, 0.050),
    "8/12": (0x01, 0.003, 0.013),
    "10/13": (0x80, 0.005, 0.025),
    "11/11": (0x81, 0.008, 0.007),
}
RESOLUTION_MASK = 0x81
STATUS_HUMIDITY = 0x02  # LSB bit 1: '1' humidity, '0' temperature
STATUS_BITS = 0x03

# Indirection so tests can observe the waits instead of sleeping.
_sleep = time.sleep


@dataclass(frozen=True)
class Htu21dOptions:
    bus: int = 6
    address: int = ADDRESS
    # Humidity/temperature bits: 12/14 (default, slowest), 11/11, 10/13 or 8/12.
    resolution: str = "12/14"


def measurement(data: bytes, what: str) -> int:
    """The 16-bit signal in a 3-byte reply, after checking its CRC and status bits; the
    status bits are cleared (datasheet: set them to 0 before converting)."""
    expected = crc8(data[0:2], HTU21D_INIT)
    if data[2] != expected:
        raise SensorError("htu21d %s word 0x%02x%02x: CRC 0x%02x received, 0x%02x expected (noise on the bus?)"
                          % (what, data[0], data[1], data[2], expected))
    raw = (data[0] << 8) | data[1]
    answered = "humidity" if raw & STATUS_HUMIDITY else "temperature"
    if answered != what:
        raise SensorError("htu21d: asked for %s, but the status bits of 0x%04x say the part measured %s"
                          % (what, raw, answered))
    return raw & ~STATUS_BITS & 0xFFFF


def temperature(signal: int) -> float:
    # Datasheet "Temperature conversion": T = -46.85 + 175.72 * S_Temp / 2^16.
    return -46.85 + 175.72 * signal / 65536.0


def humidity(signal: int) -> float:
    # Datasheet "Relative humidity conversion": RH = -6 + 125 * S_RH / 2^16. Not clamped to
    # 0-100: near saturation or dryness the part may read a little outside, and a clamped
    # value would hide it; the sensor's `range` key marks such readings instead.
    return -6.0 + 125.0 * signal / 65536.0


class Htu21dSensor(Sensor):
    Options = Htu21dOptions
    _device: Optional[I2CDevice] = None

    @classmethod
    def check_options(cls, options: Htu21dOptions) -> List[Tuple[str, str]]:
        problems = []
        if options.address != ADDRESS:
            problems.append(("address", "0x%02x is not an HTU21D address: the part always answers at 0x40"
                                        % options.address))
        if options.resolution not in RESOLUTIONS:
            problems.append(("resolution", "%r is not one of: %s (humidity/temperature bits)"
                                           % (options.resolution, ", ".join(RESOLUTIONS))))
        return problems

    @classmethod
    def channels(cls, options: Htu21dOptions) -> Tuple[Channel, ...]:
        return (Channel("temperature", "degC"), Channel("humidity", "%RH"))

    def setup(self) -> None:
        device = self.board.i2c(self.options.bus, self.options.address, chip="htu21d")
        device.write_byte(SOFT_RESET)
        _sleep(SOFT_RESET_S + MARGIN_S)
        # Reserved bits must keep their value: read, change the resolution bits, write back
        # (datasheet "User register").
        user = device.read_reg(READ_USER_REGISTER)
        wanted = (user & ~RESOLUTION_MASK) | RESOLUTIONS[self.options.resolution][0]
        if wanted != user:
            device.write_reg(WRITE_USER_REGISTER, wanted)
            found = device.read_reg(READ_USER_REGISTER)
            if found & RESOLUTION_MASK != wanted & RESOLUTION_MASK:
                raise SensorError("htu21d: user register reads 0x%02x after writing 0x%02x: is this an HTU21D?"
                                  % (found, wanted))
        self._device = device

    def _measure(self, command: int, duration: float, what: str) -> int:
        assert self._device is not None, "setup() first"
        self._device.write_byte(command)
        _sleep(duration + MARGIN_S)
        return measurement(self._device.read(3), what)

    def read_all(self) -> Dict[str, Value]:
        _, humidity_s, temperature_s = RESOLUTIONS[self.options.resolution]
        return {
            "temperature": temperature(self._measure(MEASURE_TEMPERATURE, temperature_s, "temperature")),
            "humidity": humidity(self._measure(MEASURE_HUMIDITY, humidity_s, "humidity")),
        }
