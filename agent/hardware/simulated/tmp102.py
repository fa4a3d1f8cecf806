"""A simulated TI TMP102 (datasheet SBOS397): a room at about 21 degC, warmest mid-afternoon.

The wire protocol as the part has it: a pointer byte selects one of four 16-bit registers
(P1/P0; the pointer stays until written again), registers go MSB first, the temperature
register holds the last conversion in the format (12 or 13 bits, D0 flag) that conversion
was made in. Conversions run at the configured rate (CR1/CR0) unless shut down (SD); in
shutdown, writing OS=1 makes one conversion, during which OS reads 0, then 1.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional

from agent.hardware.simulated.i2c import SimulatedChip
from agent.hardware.simulated.signals import room_temperature

TEMPERATURE, CONFIGURATION, TLOW, THIGH = 0, 1, 2, 3

# Configuration bits as a 16-bit word (datasheet "Configuration Register", Table 7).
OS = 0x8000
R1_R0 = 0x6000  # read-only, always '11'
WRITABLE = 0x9FD0  # OS F1 F0 POL TM SD | CR1 CR0 EM (R1/R0, AL and the low nibble are not)
POL = 0x0400
SD = 0x0100
CR = 0x00C0
AL = 0x0020
EM = 0x0010
POWER_ON_CONFIG = 0x60A0
# Conversion rates for CR1/CR0 = 00, 01, 10, 11: 0.25, 1, 4 (default), 8 Hz.
PERIODS_S = (4.0, 1.0, 0.25, 0.125)
CONVERSION_S = 0.026  # typical


def encode(degc: float, extended: bool) -> int:
    """The temperature register for `degc`: the inverse of the datasheet's Tables 5 and 6,
    clamped to the format's range as the part's converter saturates."""
    bits = 13 if extended else 12
    count = max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, int(round(degc / 0.0625))))
    word = (count & ((1 << bits) - 1)) << (16 - bits)
    return word | (1 if extended else 0)


def degc_of(word: int, extended: bool) -> float:
    bits = 13 if extended else 12
    count = word >> (16 - bits)
    if count & (1 << (bits - 1)):
        count -= 1 << bits
    return count * 0.0625


class SimulatedTmp102(SimulatedChip):
    def __init__(self, seed: int, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._signal = room_temperature(seed, clock)
        self.pointer = TEMPERATURE
        # Power-up values (datasheet): configuration 0x60A0, TLOW +75 degC, THIGH +80 degC;
        # the temperature register reads 0 degC until the first conversion.
        self.registers: Dict[int, int] = {TEMPERATURE: 0x0000, CONFIGURATION: POWER_ON_CONFIG,
                                          TLOW: 0x4B00, THIGH: 0x5000}
        # The part has been powered for a while: the first read finds a conversion done.
        self._next_conversion: Optional[float] = clock()
        self._alert = False

    def _convert(self) -> None:
        config = self.registers[CONFIGURATION]
        extended = bool(config & EM)
        degc = self._signal()
        self.registers[TEMPERATURE] = encode(degc, extended)
        # Comparator mode, one fault: active from THIGH until below TLOW ("Thermostat Mode").
        if degc >= degc_of(self.registers[THIGH], extended):
            self._alert = True
        elif degc < degc_of(self.registers[TLOW], extended):
            self._alert = False
        active = self._alert if config & POL else not self._alert
        self.registers[CONFIGURATION] = (config & ~AL) | (AL if active else 0)

    def _run(self) -> None:
        """Conversions that have completed by now."""
        now = self._clock()
        config = self.registers[CONFIGURATION]
        if self._next_conversion is None or now < self._next_conversion:
            return
        self._convert()
        if config & SD:
            # A one-shot conversion ended: back to shutdown, OS reads 1.
            self._next_conversion = None
            self.registers[CONFIGURATION] |= OS
        else:
            period = PERIODS_S[(config & CR) >> 6]
            # Skipped periods happened without anyone reading them.
            missed = int((now - self._next_conversion) // period)
            self._next_conversion += (missed + 1) * period

    def _write_config(self, value: int) -> None:
        old = self.registers[CONFIGURATION]
        new = (value & WRITABLE & ~OS) | R1_R0 | (old & AL)
        if new & SD:
            one_shot_running = bool(old & SD) and self._next_conversion is not None
            if value & OS and not one_shot_running:
                # One-shot: OS reads 0 until the conversion is done.
                self._next_conversion = self._clock() + CONVERSION_S
            elif not one_shot_running:
                if not old & SD:
                    self._next_conversion = None
                new |= old & OS
        elif old & SD:
            # Leaving shutdown starts a conversion.
            self._next_conversion = self._clock() + CONVERSION_S
        self.registers[CONFIGURATION] = new

    def i2c_write(self, data: bytes) -> None:
        self._run()
        self.pointer = data[0] & 0x03
        if len(data) < 2 or self.pointer == TEMPERATURE:
            return
        # "All registers are updated byte by byte": a one-byte write changes only the MSB.
        old = self.registers[self.pointer]
        value = (data[1] << 8) | (data[2] if len(data) > 2 else old & 0xFF)
        if self.pointer == CONFIGURATION:
            self._write_config(value)
        else:
            self.registers[self.pointer] = value & 0xFFF8

    def i2c_read(self, n: int) -> bytes:
        self._run()
        word = self.registers[self.pointer]
        # Reading on past the register's two bytes repeats them.
        return bytes((word >> 8, word & 0xFF)[i % 2] for i in range(n))
