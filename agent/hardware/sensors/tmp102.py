"""Texas Instruments TMP102: temperature over I2C, 0.0625 degC per count.

Four 16-bit registers behind a pointer byte, sent MSB first (datasheet SBOS397, "Pointer
Register", "Temperature Register", "Configuration Register"). The temperature is a
left-justified two's complement count: 12 bits in normal mode, 13 bits in extended mode (the
configuration's EM bit), and bit D0 of the second byte tells which format a reading is in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

from agent.hardware.board import I2CDevice
from agent.hardware.sensors.base import Sensor, SensorError, Value

# The ADD0 pin picks one of four addresses (datasheet "Serial Bus Address" table):
# GND 0x48, V+ 0x49, SDA 0x4A, SCL 0x4B.
ADDRESSES = (0x48, 0x49, 0x4A, 0x4B)

TEMPERATURE = 0x00
CONFIGURATION = 0x01

# Configuration register, first byte: OS R1 R0 F1 F0 POL TM SD; second: CR1 CR0 AL EM 0 0 0 0.
# R1/R0 are read-only and always '11' on a TMP102 (datasheet "Converter Resolution"): the
# part's only identifying mark, checked the way Linux's hwmon/tmp102 probe does.
CONFIG_R1_R0 = 0x60
CONFIG_SD = 0x01
CONFIG_OS = 0x80
CONFIG_EM = 0x10

# Temperature register, second byte: D0 is '1' in extended (13-bit) mode, '0' in normal mode;
# the other unused bits always read '0' (datasheet "Temperature Register", Tables 3-4).
EXTENDED_FLAG = 0x01
UNUSED_NORMAL = 0x0F
UNUSED_EXTENDED = 0x07

LSB_DEGC = 0.0625
# Conversion time: 26 ms typical, 35 ms maximum (datasheet "Electrical Characteristics").
CONVERSION_S = 0.035
MARGIN_S = 0.002

# Indirection so tests can observe the waits instead of sleeping.
_sleep = time.sleep


@dataclass(frozen=True)
class Tmp102Options:
    bus: int = 6
    # 0x48 with ADD0 to GND; 0x49 V+, 0x4A SDA, 0x4B SCL.
    address: int = 0x48


def temperature(msb: int, lsb: int, extended: bool) -> float:
    """degC from the temperature register's two bytes (datasheet Tables 5 and 6)."""
    word = (msb << 8) | lsb
    bits = 13 if extended else 12
    count = word >> (16 - bits)
    if count & (1 << (bits - 1)):
        count -= 1 << bits
    return count * LSB_DEGC


class Tmp102Sensor(Sensor):
    Options = Tmp102Options
    _device: Optional[I2CDevice] = None
    _extended = False

    @classmethod
    def check_options(cls, options: Tmp102Options) -> List[Tuple[str, str]]:
        if options.address not in ADDRESSES:
            return [("address", "0x%02x is not a TMP102 address: ADD0 selects 0x48 (GND), 0x49 (V+), "
                                "0x4A (SDA) or 0x4B (SCL)" % options.address)]
        return []

    @classmethod
    def default_unit(cls, options: Tmp102Options) -> Optional[str]:
        return "degC"

    def _where(self) -> str:
        return "tmp102 at I2C bus %d address 0x%02x" % (self.options.bus, self.options.address)

    def _configuration(self, device: I2CDevice) -> Tuple[int, int]:
        first, second = device.read_bytes_reg(CONFIGURATION, 2)
        if first & CONFIG_R1_R0 != CONFIG_R1_R0:
            raise SensorError("%s: configuration register reads 0x%02x%02x, but a TMP102 always has R1/R0 "
                              "(bits 14-13) set: is another part at this address?"
                              % (self._where(), first, second))
        return first, second

    def setup(self) -> None:
        device = self.board.i2c(self.options.bus, self.options.address, chip="tmp102")
        first, second = self._configuration(device)
        if first & CONFIG_SD:
            # Shut down (by another program): the register would keep its last value forever.
            # Back to continuous conversion, keeping every other setting, and wait for a result.
            device.write(bytes([CONFIGURATION, first & ~(CONFIG_SD | CONFIG_OS) & 0xFF, second]))
            _sleep(CONVERSION_S + MARGIN_S)
        self._extended = bool(second & CONFIG_EM)
        self._device = device

    def read(self) -> Value:
        assert self._device is not None, "setup() first"
        msb, lsb = self._device.read_bytes_reg(TEMPERATURE, 2)
        if lsb & UNUSED_NORMAL == 0:
            extended = False
        elif lsb & UNUSED_EXTENDED == EXTENDED_FLAG:
            extended = True
        else:
            raise SensorError("%s: temperature register reads 0x%02x%02x: its unused low bits should be "
                              "0000 (12-bit) or xxx1 with D2-D1 clear (13-bit)" % (self._where(), msb, lsb))
        if extended != self._extended:
            # EM changed since setup (another program, or a power-on reset back to 12 bits):
            # learn it again; until the part's next conversion the two can still disagree.
            self._extended = bool(self._configuration(self._device)[1] & CONFIG_EM)
            if extended != self._extended:
                raise SensorError("%s: temperature register 0x%02x%02x is in %d-bit format, but the "
                                  "configuration's EM bit says %d-bit" % (self._where(), msb, lsb,
                                                                         13 if extended else 12,
                                                                         13 if self._extended else 12))
        return temperature(msb, lsb, extended)
