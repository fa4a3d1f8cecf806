"""Any simple I2C part: one register of 1, 2 or 4 bytes, read as an integer.

The driver only turns bytes into an integer (byte order, a bit field, two's complement);
scaling to a physical unit is the framework's `calibration`, so a part this driver can read
needs no code of its own. Example, a TMP102-like left-justified 12-bit temperature:
`register: 0, length: 2, mask: 0xFFF0, shift: 4, signed: true, calibration: {scale: 0.0625}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from agent.hardware.board import I2CDevice
from agent.hardware.sensors.base import Sensor, SensorError, Value

LENGTHS = (1, 2, 4)
BYTE_ORDERS = ("big", "little")
# 0x00-0x02 and 0x78-0x7F are reserved by the I2C specification (general call, CBUS,
# 10-bit addressing...): no plain device answers there.
ADDRESS_MIN, ADDRESS_MAX = 0x03, 0x77


@dataclass(frozen=True)
class I2cOptions:
    address: int
    register: int
    bus: int = 6
    length: int = 2
    # "big": the byte at `register` is the most significant (most sensors); "little": least.
    byte_order: str = "big"
    # The field (after mask and shift) is two's complement.
    signed: bool = False
    # Bits to keep, applied to the assembled integer before `shift`.
    mask: Optional[int] = None
    # Right shift after masking, for left-justified values.
    shift: int = 0


def field_width(options: I2cOptions) -> int:
    """Bits in the value after mask and shift: where its sign bit is when `signed`."""
    if options.mask is not None:
        return max(1, (options.mask >> options.shift).bit_length())
    return options.length * 8 - options.shift


def decode(data: bytes, options: I2cOptions) -> int:
    value = int.from_bytes(data, "little") if options.byte_order == "little" else int.from_bytes(data, "big")
    if options.mask is not None:
        value &= options.mask
    value >>= options.shift
    if options.signed:
        width = field_width(options)
        if value & (1 << (width - 1)):
            value -= 1 << width
    return value


class I2cSensor(Sensor):
    Options = I2cOptions
    _device: Optional[I2CDevice] = None

    @classmethod
    def check_options(cls, options: I2cOptions) -> List[Tuple[str, str]]:
        problems = []
        if options.bus < 0:
            problems.append(("bus", "%d is not an I2C bus number (the Edison's breakout uses 6)" % options.bus))
        if not ADDRESS_MIN <= options.address <= ADDRESS_MAX:
            problems.append(("address", "0x%02x is not a 7-bit device address: use 0x%02x-0x%02x"
                                        % (options.address, ADDRESS_MIN, ADDRESS_MAX)))
        if not 0 <= options.register <= 0xFF:
            problems.append(("register", "%d is not a register number: use 0-255 (0x00-0xff)" % options.register))
        if options.byte_order not in BYTE_ORDERS:
            problems.append(("byte_order", "%r is not one of: %s" % (options.byte_order, ", ".join(BYTE_ORDERS))))
        if options.length not in LENGTHS:
            problems.append(("length", "%d is not one of: %s (bytes)"
                                       % (options.length, ", ".join(str(n) for n in LENGTHS))))
            return problems
        bits = options.length * 8
        if not 0 <= options.shift < bits:
            problems.append(("shift", "%d does not fit a %d-byte value: use 0-%d" % (options.shift, options.length,
                                                                                      bits - 1)))
        elif options.mask is not None:
            if not 0 < options.mask < 1 << bits:
                problems.append(("mask", "0x%x does not fit a %d-byte value: use 0x1-0x%x"
                                         % (options.mask, options.length, (1 << bits) - 1)))
            elif options.mask >> options.shift == 0:
                problems.append(("mask", "0x%x shifted right by %d leaves no bits: the value would always be 0"
                                         % (options.mask, options.shift)))
        return problems

    def setup(self) -> None:
        # No named part: a simulated board puts its generic drifting chip here.
        self._device = self.board.i2c(self.options.bus, self.options.address, chip=None)
        # One read now, so a missing device or a wrong address shows at start, not at the first sample.
        self.read()

    def read(self) -> Value:
        assert self._device is not None, "setup() first"
        data = self._device.read_bytes_reg(self.options.register, self.options.length)
        if len(data) != self.options.length:
            raise SensorError("i2c device 0x%02x on bus %d: register 0x%02x returned %d bytes, %d expected"
                              % (self.options.address, self.options.bus, self.options.register, len(data),
                                 self.options.length))
        return decode(data, self.options)
