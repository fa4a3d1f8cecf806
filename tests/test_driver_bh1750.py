"""bh1750: ROHM BH1750FVI illuminance over I2C, checked against the datasheet's opcodes and example."""

from __future__ import annotations

from typing import List

import pytest

import agent.hardware.simulated
from agent.hardware.board import BoardError, MraaBoard
from agent.hardware.sensors import bh1750
from agent.hardware.sensors.base import Channel, SensorError
from agent.hardware.sensors.bh1750 import Bh1750Options, Bh1750Sensor
from agent.hardware.simulated import SimulatedBoard
from agent.hardware.simulated.bh1750 import SimulatedBh1750
from conftest import EPOCH, Clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(bh1750, "_sleep", c.sleep)
    return c


class Part:
    """The wire view of a BH1750 that always answers the same two data bytes: it records the
    opcodes it is sent (one per write, as the part takes them)."""

    def __init__(self, high: int, low: int) -> None:
        self.data = bytes([high, low])
        self.opcodes: List[int] = []

    def i2c_write(self, data: bytes) -> None:
        assert len(data) == 1, "the BH1750 takes one opcode per write"
        self.opcodes.append(data[0])

    def i2c_read(self, n: int) -> bytes:
        return self.data[:n]


def sensor(board: object, **options: object) -> Bh1750Sensor:
    s = Bh1750Sensor("light", Bh1750Options(**options), board)  # type: ignore[arg-type]
    s.setup()
    return s


# Datasheet "I2C Bus Access", Read Format example: High Byte 1000_0011, Low Byte 1001_0000
# -> (2^15 + 2^9 + 2^8 + 2^7 + 2^4) / 1.2 = 28067 lx.
EXAMPLE = (0x83, 0x90)
EXAMPLE_LX = 28067


def test_the_datasheet_example_in_one_time_h_resolution_mode(mraa, clock):
    part = Part(*EXAMPLE)
    mraa._add_i2c_device(6, 0x23, part)
    s = sensor(MraaBoard(mraa))
    # Power On, Reset, then MTreg 69 = 010_00101 as "01000_010" and "011_00101".
    assert part.opcodes == [0x01, 0x07, 0x42, 0x65]
    assert s.read() == pytest.approx(EXAMPLE_LX, abs=0.5)
    # Each measurement: Power On, One Time H-Resolution Mode, wait the 180 ms maximum.
    assert part.opcodes[4:] == [0x01, 0x20]
    assert clock.waits == [0.180 + bh1750.MARGIN_S]


def test_h_resolution_mode2_halves_the_count(mraa, clock):
    part = Part(*EXAMPLE)
    mraa._add_i2c_device(6, 0x23, part)
    assert sensor(MraaBoard(mraa), mode="high2").read() == pytest.approx(EXAMPLE_LX / 2, abs=0.5)
    assert part.opcodes[-1] == 0x21
    assert clock.waits == [0.180 + bh1750.MARGIN_S]


def test_l_resolution_mode_waits_its_24_ms_maximum(mraa, clock):
    part = Part(*EXAMPLE)
    mraa._add_i2c_device(6, 0x5C, part)
    assert sensor(MraaBoard(mraa), address=0x5C, mode="low").read() == pytest.approx(EXAMPLE_LX, abs=0.5)
    assert part.opcodes[-1] == 0x23
    assert clock.waits == [pytest.approx(0.024 + bh1750.MARGIN_S)]


@pytest.mark.parametrize(("mtreg", "high", "low"), [(31, 0x40, 0x7F), (138, 0x44, 0x6A), (254, 0x47, 0x7E)])
def test_mtreg_is_written_in_two_halves_and_scales_sensitivity_and_time(mraa, clock, mtreg, high, low):
    part = Part(*EXAMPLE)
    mraa._add_i2c_device(6, 0x23, part)
    s = sensor(MraaBoard(mraa), mtreg=mtreg)
    assert part.opcodes[2:4] == [high, low]
    # Datasheet: lx = count / 1.2 * (69 / MTreg); the measurement time grows with MTreg.
    assert s.read() == pytest.approx(0x8390 / 1.2 * 69 / mtreg)
    assert clock.waits == [pytest.approx(0.180 * mtreg / 69 + bh1750.MARGIN_S)]


def test_a_saturated_reading_is_refused_with_what_to_change(mraa, clock):
    mraa._add_i2c_device(6, 0x23, Part(0xFF, 0xFF))
    with pytest.raises(SensorError, match=r"saturated \(count 0xffff, 54612 lx or more\): lower mtreg"):
        sensor(MraaBoard(mraa)).read()


def test_options_are_checked_against_what_the_part_can_do():
    assert Bh1750Sensor.channels(Bh1750Options()) == (Channel("", "lx"),)
    assert Bh1750Sensor.check_options(Bh1750Options(address=0x5C, mode="low", mtreg=254)) == []
    problems = dict(Bh1750Sensor.check_options(Bh1750Options(address=0x24, mode="medium", mtreg=30)))
    assert problems == {
        "address": "0x24 is not a BH1750 address: ADDR low is 0x23, ADDR high is 0x5C",
        "mode": "'medium' is not one of: high, high2, low",
        "mtreg": "30 is outside the part's 31-254 (default 69)",
    }
    assert dict(Bh1750Sensor.check_options(Bh1750Options(mtreg=255)))["mtreg"].startswith("255 is outside")


def test_no_device_at_the_address_is_a_board_error_naming_bus_and_address(mraa):
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x23: write byte 0x01: unspecified error"):
        sensor(MraaBoard(mraa))


def test_failing_reads_are_board_errors(mraa, clock):
    mraa._add_i2c_device(6, 0x23, Part(*EXAMPLE))
    s = sensor(MraaBoard(mraa))
    mraa._fail_reads("i2c", 6)
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x23: read 2 bytes failed"):
        s.read()


# The simulation.


def simulated_board(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> SimulatedBoard:
    monkeypatch.setitem(agent.hardware.simulated.CHIPS, "bh1750", lambda seed: SimulatedBh1750(seed, clock=clock))
    return SimulatedBoard()


def readings(s: Bh1750Sensor, clock: Clock, n: int = 4) -> List[float]:
    values = []
    for _ in range(n):
        values.append(float(s.read()))
        clock.now += 10.0
    return values


def test_the_simulated_part_reads_as_a_lit_room_and_repeats_for_a_seed(monkeypatch, clock):
    first = readings(sensor(simulated_board(monkeypatch, clock)), clock)
    clock.now = EPOCH
    assert readings(sensor(simulated_board(monkeypatch, clock)), clock) == first
    assert all(50.0 < v < 600.0 for v in first)


def test_the_simulated_part_behind_the_fake_mraa_reads_the_same(mraa, monkeypatch, clock):
    mraa._add_i2c_device(6, 0x23, SimulatedBh1750(seed=0x23, clock=clock))
    through_mraa = readings(sensor(MraaBoard(mraa)), clock)
    clock.now = EPOCH
    assert readings(sensor(simulated_board(monkeypatch, clock)), clock) == through_mraa


@pytest.mark.parametrize(("options", "resolution"), [
    ({"mode": "high2"}, 0.5), ({"mode": "low"}, 4.0), ({"mtreg": 138}, 0.5), ({"mode": "high", "mtreg": 31}, 2.0)])
def test_the_simulated_part_encodes_the_same_light_for_every_mode_and_mtreg(mraa, clock, options, resolution):
    # Same seed and moment: the same light, counted per mode and MTreg; the driver undoes it.
    mraa._add_i2c_device(6, 0x23, SimulatedBh1750(seed=1, clock=clock))
    reference = sensor(MraaBoard(mraa)).read()
    clock.now = EPOCH
    mraa._add_i2c_device(6, 0x23, SimulatedBh1750(seed=1, clock=clock))
    assert sensor(MraaBoard(mraa), **options).read() == pytest.approx(reference, abs=resolution + 1.0)


def test_the_simulated_part_ignores_measurement_and_reset_while_powered_down(clock):
    part = SimulatedBh1750(seed=2, clock=clock)
    part.i2c_write(bytes([0x20]))  # One Time H-Resolution without Power On
    clock.now += 1.0
    assert part.i2c_read(2) == b"\x00\x00"
    part.i2c_write(bytes([0x01]))
    part.i2c_write(bytes([0x20]))
    clock.now += 0.119
    assert part.i2c_read(2) == b"\x00\x00"  # still measuring (120 ms typical)
    clock.now += 0.001
    measured = part.i2c_read(2)
    assert measured != b"\x00\x00" and not part.powered  # one-time: powered down after
    part.i2c_write(bytes([0x07]))
    assert part.i2c_read(2) == measured  # Reset is not acceptable in Power Down
    part.i2c_write(bytes([0x01]))
    part.i2c_write(bytes([0x07]))
    assert part.i2c_read(2) == b"\x00\x00"


def test_the_simulated_part_keeps_measuring_in_continuous_mode(clock):
    part = SimulatedBh1750(seed=4, clock=clock)
    part.i2c_write(bytes([0x01]))
    part.i2c_write(bytes([0x13]))  # Continuously L-Resolution
    clock.now += 0.016
    assert part.i2c_read(2) != b"\x00\x00" and part.powered
    part.i2c_write(bytes([0x00]))
    assert not part.powered
