"""A simulated Sensirion SHT3x-DIS: 16-bit commands, CRC-protected words, a status register.

It answers the commands the sht31 driver sends (and the rest of the single-shot set) as the
datasheet describes: a measurement command leaves six bytes to read (temperature word, CRC,
humidity word, CRC), read once; a read with nothing to send is NACKed, as the real part NACKs a
read header when no measurement is done (section 4.4).
"""

from __future__ import annotations

import errno
import os
import time
from typing import Callable

from agent.hardware.sensors.crc8 import SHT3X_INIT, crc8
from agent.hardware.simulated.i2c import SimulatedChip
from agent.hardware.simulated.signals import room_humidity, room_temperature

# Single-shot commands, with and without clock stretching (Table 9): the simulation has the
# data ready at once, so both kinds behave the same.
MEASURE_COMMANDS = frozenset({0x2400, 0x240B, 0x2416, 0x2C06, 0x2C0D, 0x2C10})
SOFT_RESET = 0x30A2
READ_STATUS = 0xF32D
CLEAR_STATUS = 0x3041
HEATER_ON = 0x306D
HEATER_OFF = 0x3066
# Table 18: after any reset, alert pending (bit 15) and reset detected (bit 4) are set.
STATUS_AFTER_RESET = 0x8010
STATUS_HEATER = 1 << 13
STATUS_COMMAND_FAILED = 1 << 1
# Clear status clears bits 15, 11, 10 and 4 (Table 19).
STATUS_CLEARABLE = 0x8C10


def nack() -> OSError:
    return OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


class SimulatedSht31(SimulatedChip):
    def __init__(self, seed: int, clock: Callable[[], float] = time.time) -> None:
        self._temperature = room_temperature(seed, clock)
        self._humidity = room_humidity(seed + 1, clock)
        self.status = STATUS_AFTER_RESET
        self._out = b""

    @staticmethod
    def _word(value: int) -> bytes:
        data = bytes([value >> 8, value & 0xFF])
        return data + bytes([crc8(data, SHT3X_INIT)])

    def _measure(self) -> bytes:
        # The datasheet's conversions (section 4.13) inverted, to the words the part would send.
        celsius, percent = self._temperature(), self._humidity()
        raw_t = round((celsius + 45.0) * 65535.0 / 175.0)
        raw_rh = round(min(100.0, max(0.0, percent)) * 65535.0 / 100.0)
        return self._word(max(0, min(0xFFFF, raw_t))) + self._word(raw_rh)

    def i2c_write(self, data: bytes) -> None:
        # Any new command discards what was not read (the data memory holds one result).
        self._out = b""
        command = int.from_bytes(data[:2], "big") if len(data) >= 2 else -1
        self.status &= ~STATUS_COMMAND_FAILED
        if command in MEASURE_COMMANDS:
            self._out = self._measure()
        elif command == SOFT_RESET:
            self.status = STATUS_AFTER_RESET
        elif command == READ_STATUS:
            self._out = self._word(self.status)
        elif command == CLEAR_STATUS:
            self.status &= ~STATUS_CLEARABLE
        elif command == HEATER_ON:
            self.status |= STATUS_HEATER
        elif command == HEATER_OFF:
            self.status &= ~STATUS_HEATER
        else:
            self.status |= STATUS_COMMAND_FAILED

    def i2c_read(self, n: int) -> bytes:
        if not self._out:
            raise nack()
        # The master may stop early (section 4.4); past the data the bus reads high.
        data, self._out = self._out[:n], b""
        return data + b"\xff" * (n - len(data))
