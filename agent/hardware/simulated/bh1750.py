"""A simulated ROHM BH1750FVI: an indoor room at about 300 lx, brightest early afternoon.

The wire protocol as the part has it (datasheet "Instruction Set Architecture", "I2C Bus
Access"): one opcode per write, no registers, a plain two-byte read of the data register,
high byte first. It starts in Power Down; Reset is ignored there (the datasheet: "not
acceptable in Power Down mode"), and so is a measurement command, which the datasheet's
measurement procedure only sends after Power On (stricter than the part may be: Linux's
iio/light/bh1750 sends One Time H-Resolution from Power Down). A measurement takes the typical time
(120 ms H-resolution, 16 ms L-resolution, scaled by MTreg/69); until it ends the data
register keeps its previous value. One-time modes power the part down when done.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Tuple

from agent.hardware.simulated.i2c import SimulatedChip
from agent.hardware.simulated.signals import Signal

POWER_DOWN, POWER_ON, RESET = 0x00, 0x01, 0x07
MTREG_DEFAULT = 69
# Measurement opcodes: typical time at MTreg 69, counts per lux at MTreg 69 (datasheet: 1.2,
# doubled in H-resolution mode2), and the mode's resolution in lux.
MEASUREMENTS: Dict[int, Tuple[float, float, float]] = {
    0x10: (0.120, 1.2, 1.0),  # continuously H-resolution
    0x11: (0.120, 2.4, 0.5),  # continuously H-resolution mode2
    0x13: (0.016, 1.2, 4.0),  # continuously L-resolution
    0x20: (0.120, 1.2, 1.0),  # one time H-resolution
    0x21: (0.120, 2.4, 0.5),  # one time H-resolution mode2
    0x23: (0.016, 1.2, 4.0),  # one time L-resolution
}
ONE_TIME = 0x20


class SimulatedBh1750(SimulatedChip):
    def __init__(self, seed: int, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._signal = Signal(seed=seed, mean=300.0, swing=150.0, noise=3.0, peak_hour=13.0,
                              spike_chance=0.002, spike=150.0, clock=clock)
        # After VCC and DVI come up the part is in Power Down with a zero data register.
        self.powered = False
        self.mtreg = MTREG_DEFAULT
        self.data = 0
        self._measuring: Optional[int] = None
        self._done_at = 0.0
        self._measuring_mtreg = MTREG_DEFAULT

    def _duration(self, opcode: int, mtreg: int) -> float:
        return MEASUREMENTS[opcode][0] * mtreg / MTREG_DEFAULT

    def _count(self, opcode: int, mtreg: int) -> int:
        _, counts_per_lux, resolution = MEASUREMENTS[opcode]
        lx = max(0.0, self._signal())
        lx = round(lx / resolution) * resolution
        return min(0xFFFF, int(round(lx * counts_per_lux * mtreg / MTREG_DEFAULT)))

    def _run(self) -> None:
        """Measurements that have ended by now."""
        opcode = self._measuring
        if opcode is None or self._clock() < self._done_at:
            return
        self.data = self._count(opcode, self._measuring_mtreg)
        if opcode & ONE_TIME:
            self._measuring = None
            self.powered = False
            return
        period = self._duration(opcode, self._measuring_mtreg)
        missed = int((self._clock() - self._done_at) // period)
        self._done_at += (missed + 1) * period

    def i2c_write(self, data: bytes) -> None:
        self._run()
        # "Not able to accept plural command without stop condition": one opcode per write.
        opcode = data[0]
        if opcode == POWER_DOWN:
            self.powered = False
            self._measuring = None
        elif opcode == POWER_ON:
            self.powered = True
        elif opcode == RESET:
            if self.powered:
                self.data = 0
        elif opcode in MEASUREMENTS:
            if self.powered:
                self._measuring = opcode
                self._measuring_mtreg = self.mtreg
                self._done_at = self._clock() + self._duration(opcode, self.mtreg)
        elif opcode & 0xF8 == 0x40:
            # "01000_MT[7,6,5]"
            self.mtreg = ((opcode & 0x07) << 5) | (self.mtreg & 0x1F)
        elif opcode & 0xE0 == 0x60:
            # "011_MT[4,3,2,1,0]"
            self.mtreg = (self.mtreg & 0xE0) | (opcode & 0x1F)

    def i2c_read(self, n: int) -> bytes:
        self._run()
        # Past the two data bytes the part drives nothing: the bus reads high.
        return bytes((self.data >> 8, self.data & 0xFF)[i] if i < 2 else 0xFF for i in range(n))
