"""The CRC-8 that Sensirion-style humidity parts append to each 16-bit word.

Polynomial 0x31 (x^8 + x^5 + x^4 + 1), MSB first, no reflection, no final XOR. The parts
differ only in the initial value: the SHT3x starts at 0xFF (SHT3x-DIS datasheet, Table 20,
"CRC(0xBEEF) = 0x92"), the HTU21D(F) and its SHT21/Si7021 relatives at 0x00 (HTU21D(F)
datasheet, "CRC checksum": CRC(0xDC) = 0x79, CRC(0x683A) = 0x7C, CRC(0x4E85) = 0x6B).
"""

from __future__ import annotations

POLYNOMIAL = 0x31
SHT3X_INIT = 0xFF
HTU21D_INIT = 0x00


def crc8(data: bytes, init: int) -> int:
    crc = init
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ POLYNOMIAL) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc
