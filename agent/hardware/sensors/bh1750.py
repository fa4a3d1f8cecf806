"""ROHM BH1750FVI: illuminance over I2C.

The part has no registers: the host sends one-byte opcodes, each in its own write
(datasheet "I2C Bus Access", Write Format: "not able to accept plural command without stop
condition"), and reads the result as a plain two-byte read, high byte first. There is no
status to poll, so a one-time measurement is read after the datasheet's maximum time.
References: BH1750FVI datasheet (ROHM, Rev.D), "Instruction Set Architecture", "Electrical
Characteristics", "Measurement sequence", "Adjust measurement result for influence of
optical window" (MTreg); Linux drivers/iio/light/bh1750.c.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from agent.hardware.board import I2CDevice
from agent.hardware.sensors.base import Sensor, SensorError, Value

# ADDR pin low 0x23, high 0x5C (datasheet "Slave Address").
ADDRESSES = (0x23, 0x5C)

# Opcodes (datasheet "Instruction Set Architecture").
POWER_ON = 0x01
# Clears the data register; "not acceptable in Power Down mode", so sent after POWER_ON.
RESET = 0x07
# Measurement time register: "01000_MT[7,6,5]" then "011_MT[4,3,2,1,0]".
MTREG_HIGH = 0x40
MTREG_LOW = 0x60
MTREG_DEFAULT = 69
MTREG_MIN, MTREG_MAX = 31, 254

# One-time modes (the part powers down after the measurement), with the datasheet's maximum
# measurement time at the default MTreg (H-resolution 180 ms, L-resolution 24 ms) and the
# counts per lux: 1.2 (the "Measurement Accuracy" typical), doubled by H-resolution mode2.
MODES: Dict[str, Tuple[int, float, float]] = {
    #        opcode, max s at MTreg 69, counts per lux at MTreg 69
    "high": (0x20, 0.180, 1.2),
    "high2": (0x21, 0.180, 2.4),
    "low": (0x23, 0.024, 1.2),
}
# Past the maximum: the part does not signal the end of a measurement.
MARGIN_S = 0.005
SATURATED = 0xFFFF

# Indirection so tests can observe the waits instead of sleeping.
_sleep = time.sleep


@dataclass(frozen=True)
class Bh1750Options:
    bus: int = 6
    # 0x23 with ADDR low (most breakout boards), 0x5C with ADDR high.
    address: int = 0x23
    # high: 1 lx resolution; high2: 0.5 lx (half the range); low: 4 lx, 7.5x faster.
    mode: str = "high"
    # Measurement time register, 31-254: sensitivity (and measurement time) scale with it.
    mtreg: int = MTREG_DEFAULT


def measurement_time(mode: str, mtreg: int) -> float:
    """The datasheet's maximum for `mode`, scaled by MTreg as the integration time is."""
    return MODES[mode][1] * mtreg / MTREG_DEFAULT


def lux(count: int, mode: str, mtreg: int) -> float:
    # Datasheet "Read Format": lx = count / 1.2; MTreg scales the sensitivity by MTreg/69 and
    # H-resolution mode2 doubles it ("Adjust measurement result..." section).
    return count / MODES[mode][2] * MTREG_DEFAULT / mtreg


class Bh1750Sensor(Sensor):
    Options = Bh1750Options
    _device: Optional[I2CDevice] = None

    @classmethod
    def check_options(cls, options: Bh1750Options) -> List[Tuple[str, str]]:
        problems = []
        if options.address not in ADDRESSES:
            problems.append(("address", "0x%02x is not a BH1750 address: ADDR low is 0x23, ADDR high is 0x5C"
                                        % options.address))
        if options.mode not in MODES:
            problems.append(("mode", "%r is not one of: %s" % (options.mode, ", ".join(MODES))))
        if not MTREG_MIN <= options.mtreg <= MTREG_MAX:
            problems.append(("mtreg", "%d is outside the part's %d-%d (default %d)"
                                      % (options.mtreg, MTREG_MIN, MTREG_MAX, MTREG_DEFAULT)))
        return problems

    @classmethod
    def default_unit(cls, options: Bh1750Options) -> Optional[str]:
        return "lx"

    def setup(self) -> None:
        device = self.board.i2c(self.options.bus, self.options.address, chip="bh1750")
        device.write_byte(POWER_ON)
        # Removes a previous measurement result (datasheet: Reset's purpose).
        device.write_byte(RESET)
        mtreg = self.options.mtreg
        device.write_byte(MTREG_HIGH | (mtreg >> 5))
        device.write_byte(MTREG_LOW | (mtreg & 0x1F))
        self._device = device

    def read(self) -> Value:
        assert self._device is not None, "setup() first"
        mode, mtreg = self.options.mode, self.options.mtreg
        # A one-time measurement leaves the part powered down: the datasheet's measurement
        # procedure powers it on before each measurement command.
        self._device.write_byte(POWER_ON)
        self._device.write_byte(MODES[mode][0])
        _sleep(measurement_time(mode, mtreg) + MARGIN_S)
        high, low = self._device.read(2)
        count = (high << 8) | low
        if count == SATURATED:
            raise SensorError("bh1750 at I2C bus %d address 0x%02x: saturated (count 0xffff, %.0f lx or more): "
                              "lower mtreg, or use mode 'high' rather than 'high2'"
                              % (self.options.bus, self.options.address, lux(count, mode, mtreg)))
        return lux(count, mode, mtreg)
