"""tmp102: TI TMP102 temperature over I2C, checked against the datasheet (SBOS397) tables."""

from __future__ import annotations

from typing import Dict, List

import pytest

import agent.hardware.simulated
from agent.hardware.board import BoardError, MraaBoard
from agent.hardware.sensors import tmp102
from agent.hardware.sensors.base import Channel, SensorError
from agent.hardware.sensors.tmp102 import Tmp102Options, Tmp102Sensor
from agent.hardware.simulated import SimulatedBoard
from agent.hardware.simulated.tmp102 import SimulatedTmp102
from conftest import EPOCH, Clock


# Some 2023-11-14 22:13 UTC: a fixed moment of the simulated day.
@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(tmp102, "_sleep", c.sleep)
    return c


class Registers:
    """A TMP102's register file as the datasheet draws it: a pointer byte selects one of four
    16-bit registers, sent MSB first. Power-up values: configuration 0x60A0, TLOW 75 degC,
    THIGH 80 degC."""

    def __init__(self, temperature: int, configuration: int = 0x60A0) -> None:
        self.words: Dict[int, int] = {0: temperature, 1: configuration, 2: 0x4B00, 3: 0x5000}
        self.pointer = 0

    def i2c_write(self, data: bytes) -> None:
        self.pointer = data[0] & 0x03
        if len(data) == 3:
            self.words[self.pointer] = (data[1] << 8) | data[2]

    def i2c_read(self, n: int) -> bytes:
        word = self.words[self.pointer]
        return bytes([word >> 8, word & 0xFF][:n])


def sensor(board: object, **options: int) -> Tmp102Sensor:
    s = Tmp102Sensor("t", Tmp102Options(**options), board)  # type: ignore[arg-type]
    s.setup()
    return s


# Datasheet Table 5, "12-Bit Temperature Data Format": the 12-bit code, left-justified in the
# register (byte 2's low nibble reads 0).
TABLE_5 = [(0x7FF, 127.9375), (0x640, 100.0), (0x500, 80.0), (0x4B0, 75.0), (0x320, 50.0), (0x190, 25.0),
           (0x004, 0.25), (0x000, 0.0), (0xFFC, -0.25), (0xE70, -25.0), (0xC90, -55.0)]

# Datasheet Table 6, "13-Bit Temperature Data Format" (extended mode): the 13-bit code, shifted
# left 3, with byte 2's D0 reading 1.
TABLE_6 = [(0x0960, 150.0), (0x0800, 128.0), (0x07FF, 127.9375), (0x0640, 100.0), (0x0500, 80.0),
           (0x04B0, 75.0), (0x0320, 50.0), (0x0190, 25.0), (0x0004, 0.25), (0x0000, 0.0), (0x1FFC, -0.25),
           (0x1E70, -25.0), (0x1C90, -55.0)]


@pytest.mark.parametrize(("code", "degc"), TABLE_5)
def test_normal_mode_reads_the_datasheets_12_bit_examples(mraa, code, degc):
    mraa._add_i2c_device(6, 0x48, Registers(code << 4))
    assert sensor(MraaBoard(mraa)).read() == degc


@pytest.mark.parametrize(("code", "degc"), TABLE_6)
def test_extended_mode_read_from_the_configuration_gives_the_13_bit_examples(mraa, code, degc):
    mraa._add_i2c_device(6, 0x49, Registers((code << 3) | 0x01, configuration=0x60B0))  # EM set
    assert sensor(MraaBoard(mraa), address=0x49).read() == degc


def test_the_register_is_big_endian_not_smbus_word_order(mraa):
    # 0x1900 is 25 degC; read as an SMBus word (low byte first) it would be 0x0019: 0.0625 * 1.
    mraa._add_i2c_device(6, 0x48, Registers(0x1900))
    assert sensor(MraaBoard(mraa)).read() == 25.0


def test_unit_is_degc_and_the_address_must_be_one_add0_can_select():
    assert Tmp102Sensor.channels(Tmp102Options()) == (Channel("", "degC"),)
    assert Tmp102Sensor.check_options(Tmp102Options(address=0x4B)) == []
    [(key, message)] = Tmp102Sensor.check_options(Tmp102Options(address=0x40))
    assert key == "address"
    assert "0x40 is not a TMP102 address" in message and "0x48 (GND)" in message and "0x4B (SCL)" in message


def test_a_part_left_in_shutdown_is_put_back_to_continuous_conversion_keeping_its_settings(mraa, clock):
    # SD set, 1 Hz (CR 01), extended mode: only SD changes, then a conversion is waited for.
    part = Registers(0x0C81, configuration=0x6170)
    mraa._add_i2c_device(6, 0x48, part)
    s = sensor(MraaBoard(mraa))
    assert part.words[1] == 0x6070
    assert clock.waits == [tmp102.CONVERSION_S + tmp102.MARGIN_S]
    assert s.read() == 25.0


def test_a_running_part_is_left_as_it_is(mraa, clock):
    part = Registers(0x1900)
    mraa._add_i2c_device(6, 0x48, part)
    sensor(MraaBoard(mraa))
    assert part.words[1] == 0x60A0 and clock.waits == []


def test_another_part_at_the_address_is_refused_by_the_read_only_resolution_bits(mraa):
    mraa._add_i2c_device(6, 0x48, {0x00: 0x19, 0x01: 0x00, 0x02: 0x00})
    with pytest.raises(SensorError, match=r"configuration register reads 0x0000, but a TMP102 always has R1/R0"):
        sensor(MraaBoard(mraa))


def test_no_device_at_the_address_is_a_board_error_naming_bus_and_address(mraa):
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x48: read 2 bytes at register 0x01 failed"):
        sensor(MraaBoard(mraa))


def test_failing_reads_are_board_errors(mraa):
    mraa._add_i2c_device(6, 0x48, Registers(0x1900))
    s = sensor(MraaBoard(mraa))
    mraa._fail_reads("i2c", 6)
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x48: read 2 bytes at register 0x00 failed"):
        s.read()


def test_a_register_whose_unused_bits_are_set_is_not_a_temperature(mraa):
    part = Registers(0x1900)
    mraa._add_i2c_device(6, 0x48, part)
    s = sensor(MraaBoard(mraa))
    part.words[0] = 0xFFFF  # a bus stuck high
    with pytest.raises(SensorError, match=r"temperature register reads 0xffff: its unused low bits"):
        s.read()


def test_extended_mode_set_by_someone_else_after_setup_is_learned_again(mraa):
    part = Registers(0x1900)
    mraa._add_i2c_device(6, 0x48, part)
    s = sensor(MraaBoard(mraa))
    part.words[1], part.words[0] = 0x60B0, 0x0C81  # EM set, then a conversion in 13 bits
    assert s.read() == 25.0


def test_a_reading_in_a_format_the_configuration_denies_is_refused(mraa):
    part = Registers(0x1900)
    mraa._add_i2c_device(6, 0x48, part)
    s = sensor(MraaBoard(mraa))
    part.words[0] = 0x0C81  # D0 says 13-bit, the configuration still says 12
    with pytest.raises(SensorError, match=r"is in 13-bit format, but the configuration's EM bit says 12-bit"):
        s.read()


# The simulation.


def simulated_board(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> SimulatedBoard:
    monkeypatch.setitem(agent.hardware.simulated.CHIPS, "tmp102", lambda seed: SimulatedTmp102(seed, clock=clock))
    return SimulatedBoard()


def readings(s: Tmp102Sensor, clock: Clock, n: int = 5) -> List[float]:
    values = []
    for _ in range(n):
        values.append(float(s.read()))
        clock.now += 1.0
    return values


def test_the_simulated_part_reads_as_a_room_and_repeats_for_a_seed(monkeypatch, clock):
    first = readings(sensor(simulated_board(monkeypatch, clock)), clock)
    clock.now = EPOCH
    again = readings(sensor(simulated_board(monkeypatch, clock)), clock)
    assert first == again
    assert all(17.0 < v < 25.0 for v in first)
    assert all(v * 16 == int(v * 16) for v in first)  # whole counts of 0.0625 degC


def test_the_simulated_part_behind_the_fake_mraa_reads_the_same(mraa, monkeypatch, clock):
    mraa._add_i2c_device(6, 0x48, SimulatedTmp102(seed=0x48, clock=clock))
    through_mraa = readings(sensor(MraaBoard(mraa)), clock)
    clock.now = EPOCH
    assert readings(sensor(simulated_board(monkeypatch, clock)), clock) == through_mraa


def test_the_simulated_part_powers_up_with_the_datasheet_configuration(clock):
    part = SimulatedTmp102(seed=1, clock=clock)
    part.i2c_write(bytes([0x01]))
    assert part.i2c_read(2) == bytes([0x60, 0xA0])
    part.i2c_write(bytes([0x03]))
    assert part.i2c_read(2) == bytes([0x50, 0x00])  # THIGH 80 degC


def test_the_simulated_part_converts_at_its_rate_and_switches_format_with_em(mraa, clock):
    part = SimulatedTmp102(seed=7, clock=clock)
    mraa._add_i2c_device(6, 0x48, part)
    s = sensor(MraaBoard(mraa))
    first = s.read()
    part.i2c_write(bytes([0x01, 0x60, 0xB0]))  # another program sets EM
    assert part.i2c_read(2) == bytes([0x60, 0xB0])
    part.i2c_write(bytes([0x00]))
    assert part.i2c_read(2)[1] & 0x01 == 0  # no conversion yet: still the 12-bit result
    clock.now += 0.25  # 4 Hz
    assert part.i2c_read(2)[1] & 0x01 == 1
    assert abs(s.read() - first) < 1.0


def test_the_simulated_part_in_shutdown_converts_once_per_one_shot(clock):
    part = SimulatedTmp102(seed=3, clock=clock)
    part.i2c_write(bytes([0x00]))
    part.i2c_read(2)
    part.i2c_write(bytes([0x01, 0x61, 0xA0]))  # SD
    part.i2c_write(bytes([0x00]))
    held = part.i2c_read(2)
    clock.now += 600.0
    assert part.i2c_read(2) == held
    part.i2c_write(bytes([0x01, 0xE1, 0xA0]))  # OS: one conversion
    assert part.i2c_read(2)[0] & 0x80 == 0  # converting
    clock.now += 0.026
    assert part.i2c_read(2)[0] & 0x81 == 0x81  # done, still shut down


def test_the_driver_wakes_a_simulated_part_left_in_shutdown(mraa, clock):
    part = SimulatedTmp102(seed=5, clock=clock)
    mraa._add_i2c_device(6, 0x48, part)
    part.i2c_write(bytes([0x01, 0x61, 0xA0]))
    s = sensor(MraaBoard(mraa))
    part.i2c_write(bytes([0x01]))
    assert part.i2c_read(2) == bytes([0x60, 0xA0])
    assert 17.0 < s.read() < 25.0


def test_the_simulated_alert_bit_follows_the_limits(clock):
    part = SimulatedTmp102(seed=9, clock=clock)
    part.i2c_write(bytes([0x03, 0x0A, 0x00]))  # THIGH 10 degC: the room is above it
    part.i2c_write(bytes([0x02, 0x05, 0x00]))  # TLOW 5 degC
    clock.now += 0.25
    part.i2c_write(bytes([0x01]))
    assert part.i2c_read(2)[1] & 0x20 == 0  # POL 0: AL reads 0 while active
