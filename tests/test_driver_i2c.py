"""i2c: any simple I2C register read as an integer (byte order, bit field, two's complement)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.hardware.board import BoardError, MraaBoard
from agent.hardware.sensors.base import Channel
from agent.hardware.sensors.i2c import I2cOptions, I2cSensor
from agent.hardware.simulated import SimulatedBoard


def sensor(board: Any, **options: Any) -> I2cSensor:
    s = I2cSensor("raw", I2cOptions(**options), board)
    s.setup()
    return s


def test_two_bytes_big_endian_by_default(mraa):
    mraa._add_i2c_device(6, 0x40, {0x10: 0x12, 0x11: 0x34})
    assert sensor(MraaBoard(mraa), address=0x40, register=0x10).read() == 0x1234


def test_little_endian_takes_the_first_byte_as_the_low_one(mraa):
    mraa._add_i2c_device(6, 0x40, {0x10: 0x12, 0x11: 0x34})
    assert sensor(MraaBoard(mraa), address=0x40, register=0x10, byte_order="little").read() == 0x3412


@pytest.mark.parametrize(("length", "registers", "signed", "value"), [
    (1, {0x05: 0x9C}, False, 156),
    (1, {0x05: 0x9C}, True, -100),
    (2, {0x05: 0xFF, 0x06: 0x38}, True, -200),
    (4, {0x05: 0x00, 0x06: 0x01, 0x07: 0x86, 0x08: 0xA0}, False, 100_000),
    (4, {0x05: 0xFF, 0x06: 0xFE, 0x07: 0x79, 0x08: 0x60}, True, -100_000),
])
def test_lengths_and_twos_complement(mraa, length, registers, signed, value):
    mraa._add_i2c_device(6, 0x40, registers)
    s = sensor(MraaBoard(mraa), address=0x40, register=0x05, length=length, signed=signed)
    assert s.read() == value


def test_a_left_justified_12_bit_field_like_the_tmp102s(mraa):
    # TMP102 datasheet Table 5: -25 degC is 0xE70, left-justified as 0xE700; 0.0625 degC per
    # count is then the sensor's `calibration: {scale: 0.0625}`.
    mraa._add_i2c_device(6, 0x48, {0x00: 0xE7, 0x01: 0x00})
    board = MraaBoard(mraa)
    assert sensor(board, address=0x48, register=0, mask=0xFFF0, shift=4, signed=True).read() * 0.0625 == -25.0
    # Without a mask the shifted field is 16 - 4 = 12 bits wide: the same value.
    assert sensor(board, address=0x48, register=0, shift=4, signed=True).read() == -400
    assert sensor(board, address=0x48, register=0, shift=4).read() == 0xE70


def test_the_mask_sets_the_fields_width_for_the_sign(mraa):
    # Bits 11-4 hold a signed byte; bits 15-12 are status flags to drop.
    mraa._add_i2c_device(6, 0x40, {0x00: 0xFE, 0x01: 0x70})
    s = sensor(MraaBoard(mraa), address=0x40, register=0, mask=0x0FF0, shift=4, signed=True)
    assert s.read() == -25


def test_one_value_whose_unit_comes_from_the_config():
    assert I2cSensor.channels(I2cOptions(address=0x40, register=0)) == (Channel("", None),)


def test_no_device_at_the_address_is_found_at_setup_naming_bus_and_address(mraa):
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x41: read 2 bytes at register 0x10 failed"):
        sensor(MraaBoard(mraa), address=0x41, register=0x10)


def test_failing_reads_are_board_errors(mraa):
    mraa._add_i2c_device(6, 0x40, {0x10: 0x12, 0x11: 0x34})
    s = sensor(MraaBoard(mraa), address=0x40, register=0x10, length=4)
    mraa._fail_reads("i2c", 6)
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x40: read 4 bytes at register 0x10 failed"):
        s.read()


class Short:
    """A device that ends its reply early."""

    def i2c_write(self, data: bytes) -> None:
        pass

    def i2c_read(self, n: int) -> bytes:
        return b"\x01"


def test_a_short_reply_is_not_a_value(mraa):
    # libmraa turns a short read into -1 and the binding into an OSError with a stale errno.
    mraa._add_i2c_device(6, 0x40, Short())
    mraa._set_errno(11)
    with pytest.raises(BoardError, match=r"read 2 bytes at register 0x10 failed: no reply, or fewer bytes "
                                         r"than asked") as caught:
        sensor(MraaBoard(mraa), address=0x40, register=0x10)
    assert "Errno" not in str(caught.value), "a stale errno says nothing about this read"


def test_valid_options_pass():
    assert I2cSensor.check_options(I2cOptions(address=0x03, register=255, length=4, byte_order="little",
                                              signed=True, mask=0xFFFF0000, shift=16)) == []
    assert I2cSensor.check_options(I2cOptions(address=0x77, register=0)) == []


@pytest.mark.parametrize(("options", "key", "message"), [
    ({"address": 0x02}, "address", "0x02 is not a 7-bit device address: use 0x03-0x77"),
    ({"address": 0x78}, "address", "0x78 is not a 7-bit device address: use 0x03-0x77"),
    ({"register": 256}, "register", "256 is not a register number: use 0-255 (0x00-0xff)"),
    ({"length": 3}, "length", "3 is not one of: 1, 2, 4 (bytes)"),
    ({"byte_order": "middle"}, "byte_order", "'middle' is not one of: big, little"),
    ({"shift": 16}, "shift", "16 does not fit a 2-byte value: use 0-15"),
    ({"mask": 0x10000}, "mask", "0x10000 does not fit a 2-byte value: use 0x1-0xffff"),
    ({"mask": 0x000F, "shift": 4}, "mask", "0xf shifted right by 4 leaves no bits: the value would always be 0"),
    ({"bus": -1}, "bus", "-1 is not an I2C bus number (the Edison's breakout uses 6)"),
])
def test_options_the_bus_cannot_have_are_reported(options, key, message):
    fields = {"address": 0x40, "register": 0, **options}
    assert I2cSensor.check_options(I2cOptions(**fields)) == [(key, message)]


def test_on_the_simulated_board_it_reads_the_generic_drifting_chip():
    board = SimulatedBoard()
    s = sensor(board, address=0x40, register=0x02)
    value = s.read()
    chip = board._chips[(6, 0x40)]
    registers = chip.registers  # type: ignore[attr-defined]
    assert value == (registers[0x02] << 8) | registers[0x03]
    # The generic chip drifts around 128 * 256 (+/- 40 * 256 over a day).
    assert 0x4000 < value < 0xC000
