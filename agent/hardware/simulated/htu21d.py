"""A simulated TE HTU21D(F): one-byte commands, no-hold measurements with status bits and CRC.

It answers as the datasheet describes: a measurement command leaves MSB, LSB (its two low
bits the status: bit 1 set for humidity) and CRC to read once, the unused low bits of a
lower resolution read as 0; the user register holds the resolution; a read with nothing to
send is NACKed, as the real part NACKs a read during or without a conversion.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Tuple

from agent.hardware.sensors.crc8 import HTU21D_INIT, crc8
from agent.hardware.simulated.i2c import SimulatedChip
from agent.hardware.simulated.sht31 import nack
from agent.hardware.simulated.signals import room_humidity, room_temperature

MEASURE_TEMPERATURE = frozenset({0xE3, 0xF3})  # hold / no hold master
MEASURE_HUMIDITY = frozenset({0xE5, 0xF5})
WRITE_USER_REGISTER = 0xE6
READ_USER_REGISTER = 0xE7
SOFT_RESET = 0xFE
USER_DEFAULT = 0x02  # 12/14 bits, heater off, OTP reload disabled
USER_HEATER = 0x04  # kept across a soft reset, as on the part
USER_WRITABLE = 0x87  # resolution (7, 0), heater (2), OTP reload (1); 3-6 are reserved or status
# User register bits 7 and 0 -> (humidity bits, temperature bits).
RESOLUTION: Dict[int, Tuple[int, int]] = {0x00: (12, 14), 0x01: (8, 12), 0x80: (10, 13), 0x81: (11, 11)}
STATUS_HUMIDITY = 0x02


class SimulatedHtu21d(SimulatedChip):
    def __init__(self, seed: int, clock: Callable[[], float] = time.time) -> None:
        self._temperature = room_temperature(seed, clock)
        self._humidity = room_humidity(seed + 1, clock)
        self.user = USER_DEFAULT
        self._out = b""

    @staticmethod
    def _reply(signal: int, bits: int, status: int) -> bytes:
        word = (signal & (0xFFFF << (16 - bits)) & 0xFFFC) | status
        data = bytes([word >> 8, word & 0xFF])
        return data + bytes([crc8(data, HTU21D_INIT)])

    def _temperature_reply(self) -> bytes:
        # The datasheet's conversion inverted: S = (T + 46.85) * 2^16 / 175.72.
        signal = round((self._temperature() + 46.85) * 65536.0 / 175.72)
        return self._reply(max(0, min(0xFFFF, signal)), RESOLUTION[self.user & 0x81][1], 0)

    def _humidity_reply(self) -> bytes:
        # S = (RH + 6) * 2^16 / 125, for a room's 0-100 %RH.
        percent = min(100.0, max(0.0, self._humidity()))
        signal = round((percent + 6.0) * 65536.0 / 125.0)
        return self._reply(min(0xFFFF, signal), RESOLUTION[self.user & 0x81][0], STATUS_HUMIDITY)

    def i2c_write(self, data: bytes) -> None:
        self._out = b""
        command = data[0]
        if command in MEASURE_TEMPERATURE:
            self._out = self._temperature_reply()
        elif command in MEASURE_HUMIDITY:
            self._out = self._humidity_reply()
        elif command == READ_USER_REGISTER:
            self._out = bytes([self.user])
        elif command == WRITE_USER_REGISTER and len(data) >= 2:
            self.user = (self.user & ~USER_WRITABLE) | (data[1] & USER_WRITABLE)
        elif command == SOFT_RESET:
            self.user = USER_DEFAULT | (self.user & USER_HEATER)

    def i2c_read(self, n: int) -> bytes:
        if not self._out:
            raise nack()
        data, self._out = self._out[:n], b""
        return data + b"\xff" * (n - len(data))
