"""Simulated I2C parts: each answers at its real address with its real register layout,
so a driver runs the same code on the simulation as on the board."""

from __future__ import annotations

from typing import Dict


class SimulatedChip:
    """A part seen at the wire level: a write transaction and a read transaction.

    Every mraa.I2c call is made of these two (a register read is a write of the register
    number followed by a read), so a chip implements only these.
    """

    def i2c_write(self, data: bytes) -> None:
        raise NotImplementedError

    def i2c_read(self, n: int) -> bytes:
        raise NotImplementedError


class RegisterChip(SimulatedChip):
    """The common layout: the first byte written selects a register (pointer), the rest are
    stored from there; reads start at the pointer and auto-increment. Subclasses compute
    live registers in `refresh` (called when a read starts) and react to writes in `written`."""

    def __init__(self) -> None:
        self.registers: Dict[int, int] = {}
        self.pointer = 0

    def refresh(self) -> None:
        """Update measurement registers before a read."""

    def written(self, reg: int, value: int) -> None:
        """A register was written (a command, a configuration)."""

    def i2c_write(self, data: bytes) -> None:
        self.pointer = data[0]
        for value in data[1:]:
            self.registers[self.pointer] = value & 0xFF
            self.written(self.pointer, value & 0xFF)
            self.pointer = (self.pointer + 1) & 0xFF

    def i2c_read(self, n: int) -> bytes:
        self.refresh()
        data = bytes(self.registers.get((self.pointer + i) & 0xFF, 0) & 0xFF for i in range(n))
        self.pointer = (self.pointer + n) & 0xFF
        return data


class MraaI2c:
    """mraa.I2c's methods over a simulated chip, so board.I2CDevice wraps it like the real thing."""

    def __init__(self, chip: SimulatedChip) -> None:
        self._chip = chip

    def address(self, address: int) -> int:
        return 0

    def readByte(self) -> int:
        return self._chip.i2c_read(1)[0]

    def readReg(self, reg: int) -> int:
        self._chip.i2c_write(bytes([reg]))
        return self._chip.i2c_read(1)[0]

    def readWordReg(self, reg: int) -> int:
        # SMBus word order, as mraa returns it: the byte at `reg` is the low byte.
        self._chip.i2c_write(bytes([reg]))
        low, high = self._chip.i2c_read(2)
        return low | (high << 8)

    def readBytesReg(self, reg: int, length: int) -> bytearray:
        self._chip.i2c_write(bytes([reg]))
        return bytearray(self._chip.i2c_read(length))

    def read(self, length: int) -> bytearray:
        return bytearray(self._chip.i2c_read(length))

    def writeByte(self, value: int) -> int:
        self._chip.i2c_write(bytes([value]))
        return 0

    def write(self, data: bytearray) -> int:
        self._chip.i2c_write(bytes(data))
        return 0

    def writeReg(self, reg: int, value: int) -> int:
        self._chip.i2c_write(bytes([reg, value]))
        return 0
