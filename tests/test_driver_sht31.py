"""sht31: the Sensirion SHT3x-DIS driver against the fake libmraa and against its simulation.

Facts from "Datasheet SHT3x-DIS" (Sensirion, v5 May 2018): 16-bit commands sent MSB first,
single shot without clock stretching 0x2400 / 0x240B / 0x2416 (Table 9) taking at most
15 / 6 / 4 ms (Table 4), soft reset 0x30A2 (at most 1.5 ms), status register 0xF32D (Table 17,
0x8010 after a reset: Table 18), replies of word + CRC-8 (poly 0x31, init 0xFF; Table 20's
example CRC(0xBEEF) = 0x92), T = -45 + 175 S/65535, RH = 100 S/65535 (section 4.13).
"""

from __future__ import annotations

import errno
from typing import Any, Dict, List

import pytest

import agent.hardware.simulated
from agent.hardware.board import BoardError, MraaBoard
from agent.hardware.sensors import sht31
from agent.hardware.sensors.base import Channel, SensorError
from agent.hardware.sensors.crc8 import SHT3X_INIT, crc8
from agent.hardware.sensors.sht31 import Sht31Options, Sht31Sensor
from agent.hardware.simulated import SimulatedBoard
from agent.hardware.simulated.sht31 import SimulatedSht31

NOON = 1_700_000_000.0  # a fixed wall clock for the simulation's day curve


@pytest.fixture(autouse=True)
def waits(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """The driver's sleeps, recorded instead of slept."""
    recorded: List[float] = []
    monkeypatch.setattr(sht31, "_sleep", recorded.append)
    return recorded


def framed(*words: int) -> bytes:
    """Words as the part sends them: MSB, LSB, CRC each."""
    out = b""
    for w in words:
        data = bytes([w >> 8, w & 0xFF])
        out += data + bytes([crc8(data, SHT3X_INIT)])
    return out


class ScriptedSht3x:
    """An SHT3x that answers each 16-bit command with fixed bytes, read once; a read with
    nothing to send is NACKed (EREMOTEIO), as the real part does."""

    def __init__(self, replies: Dict[int, bytes]) -> None:
        self.replies = replies
        self.commands: List[int] = []
        self._out = b""

    def i2c_write(self, data: bytes) -> None:
        command = int.from_bytes(data, "big")
        self.commands.append(command)
        self._out = self.replies.get(command, b"")

    def i2c_read(self, n: int) -> bytes:
        if not self._out:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        data, self._out = self._out[:n], b""
        return data


def make(board: Any, **options: Any) -> Sht31Sensor:
    sensor = Sht31Sensor("climate", Sht31Options(**options), board)
    sensor.setup()
    return sensor


def part(mraa: Any, address: int = 0x44, t: int = 0x6666, rh: int = 0x8000, status: int = 0x8010,
         tail: bytes = b"") -> ScriptedSht3x:
    measurement = framed(t, rh)
    chip = ScriptedSht3x({0xF32D: framed(status), 0x2400: measurement, 0x240B: measurement,
                          0x2416: measurement})
    mraa._add_i2c_device(6, address, chip)
    return chip


# --- datasheet facts ------------------------------------------------------------------------


def test_crc_is_the_datasheets_example():
    assert crc8(bytes([0xBE, 0xEF]), SHT3X_INIT) == 0x92


def test_conversion_spans_the_datasheets_ranges():
    assert sht31.temperature(0x0000) == -45.0
    assert sht31.temperature(0xFFFF) == 130.0
    assert sht31.temperature(0x6666) == pytest.approx(25.0)  # 0x6666 is exactly 0.4 of 65535
    assert sht31.humidity(0x0000) == 0.0
    assert sht31.humidity(0xFFFF) == 100.0


def test_channels_are_temperature_and_humidity():
    assert Sht31Sensor.channels(Sht31Options()) == (Channel("temperature", "degC"), Channel("humidity", "%RH"))


# --- the driver on the fake mraa ---------------------------------------------------------------


def test_setup_resets_and_reads_the_status_then_a_read_measures_once(mraa, waits):
    chip = part(mraa)
    sensor = make(MraaBoard(mraa))
    assert sensor.status == 0x8010
    values = sensor.read_all()
    assert values["temperature"] == pytest.approx(25.0)
    assert values["humidity"] == pytest.approx(100.0 * 0x8000 / 65535)
    assert chip.commands == [0x30A2, 0xF32D, 0x2400]
    # 1.5 ms after the reset, 15 ms for a high-repeatability conversion, each + 1 ms.
    assert waits == [pytest.approx(0.0025), pytest.approx(0.016)]


@pytest.mark.parametrize(("repeatability", "command", "wait"), [
    ("high", 0x2400, 0.016), ("medium", 0x240B, 0.007), ("low", 0x2416, 0.005)])
def test_repeatability_picks_the_command_and_the_wait(mraa, waits, repeatability, command, wait):
    chip = part(mraa)
    sensor = make(MraaBoard(mraa), repeatability=repeatability)
    waits.clear()
    sensor.read_all()
    assert chip.commands[-1] == command
    assert waits == [pytest.approx(wait)]


def test_status_read_can_be_skipped(mraa):
    chip = part(mraa)
    sensor = make(MraaBoard(mraa), read_status=False)
    assert sensor.status is None
    assert chip.commands == [0x30A2]


def test_second_address_when_addr_is_high(mraa):
    part(mraa, address=0x45, t=0xFFFF, rh=0x0000)
    assert make(MraaBoard(mraa), address=0x45).read_all() == {"temperature": 130.0, "humidity": 0.0}


def test_temperature_crc_mismatch_names_the_word(mraa):
    chip = part(mraa)
    sensor = make(MraaBoard(mraa))
    bad = bytearray(framed(0x6666, 0x8000))
    bad[2] ^= 0x01
    chip.replies[0x2400] = bytes(bad)
    with pytest.raises(SensorError, match=r"sht31 temperature word 0x6666: CRC 0x.. received, 0x.. expected"):
        sensor.read_all()


def test_humidity_crc_mismatch_names_the_word(mraa):
    chip = part(mraa)
    sensor = make(MraaBoard(mraa))
    bad = bytearray(framed(0x6666, 0x8000))
    bad[4] ^= 0x10  # a flipped data bit: the CRC no longer matches
    chip.replies[0x2400] = bytes(bad)
    with pytest.raises(SensorError, match=r"sht31 humidity word 0x8010: CRC 0x.. received, 0x.. expected"):
        sensor.read_all()


def test_status_crc_mismatch_fails_setup(mraa):
    chip = part(mraa)
    chip.replies[0xF32D] = bytes([0x80, 0x10, 0x00])
    with pytest.raises(SensorError, match=r"sht31 status word 0x8010: CRC 0x00 received"):
        make(MraaBoard(mraa))


def test_no_device_at_the_address_names_bus_and_address(mraa):
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x44: write 2 bytes: unspecified error"):
        make(MraaBoard(mraa))


def test_failing_reads_are_board_errors(mraa):
    part(mraa)
    sensor = make(MraaBoard(mraa))
    mraa._fail_reads("i2c", 6)
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x44: read 6 bytes failed"):
        sensor.read_all()


def test_failing_status_read_fails_setup(mraa):
    part(mraa)
    mraa._fail_reads("i2c", 6)
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x44: read 3 bytes failed"):
        make(MraaBoard(mraa))


def test_a_part_that_nacks_the_read_is_a_board_error(mraa):
    chip = part(mraa)
    sensor = make(MraaBoard(mraa))
    del chip.replies[0x2400]  # conversion not done: the read header is NACKed
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x44: read 6 bytes failed"):
        sensor.read_all()


def test_options_are_checked():
    assert Sht31Sensor.check_options(Sht31Options()) == []
    problems = dict(Sht31Sensor.check_options(Sht31Options(address=0x40, repeatability="max")))
    assert "0x44" in problems["address"] and "0x45" in problems["address"]
    assert problems["repeatability"] == "'max' is not one of: high, medium, low"


# --- the simulated part ------------------------------------------------------------------------


def fixed_clock() -> float:
    return NOON


def test_simulation_on_the_simulated_board(monkeypatch):
    monkeypatch.setitem(agent.hardware.simulated.CHIPS, "sht31", lambda seed: SimulatedSht31(seed, clock=fixed_clock))
    sensor = make(SimulatedBoard())
    assert sensor.status == 0x8010  # Table 18's defaults after a reset
    for _ in range(20):
        values = sensor.read_all()
        assert 15.0 < values["temperature"] < 27.0
        assert 25.0 < values["humidity"] < 65.0


def test_simulation_is_the_same_for_the_same_seed(monkeypatch):
    monkeypatch.setitem(agent.hardware.simulated.CHIPS, "sht31", lambda seed: SimulatedSht31(seed, clock=fixed_clock))
    one, other = make(SimulatedBoard()), make(SimulatedBoard())
    assert [one.read_all() for _ in range(5)] == [other.read_all() for _ in range(5)]
    # The board seeds each part with its address: the other address is another room.
    assert make(SimulatedBoard(), address=0x45).read_all() != make(SimulatedBoard()).read_all()


def test_simulation_through_the_fake_mraa(mraa):
    mraa._add_i2c_device(6, 0x45, SimulatedSht31(seed=7, clock=fixed_clock))
    values = make(MraaBoard(mraa), address=0x45, repeatability="low").read_all()
    assert 15.0 < values["temperature"] < 27.0 and 25.0 < values["humidity"] < 65.0


def test_simulation_answers_like_the_part():
    chip = SimulatedSht31(seed=1, clock=fixed_clock)
    with pytest.raises(OSError):  # nothing measured: NACK
        chip.i2c_read(6)
    chip.i2c_write(bytes([0x24, 0x00]))
    data = chip.i2c_read(6)
    assert crc8(data[0:2], SHT3X_INIT) == data[2] and crc8(data[3:5], SHT3X_INIT) == data[5]
    with pytest.raises(OSError):  # a result is read once
        chip.i2c_read(6)
    chip.i2c_write(bytes([0x30, 0x6D]))  # heater on: status bit 13
    chip.i2c_write(bytes([0xF3, 0x2D]))
    assert chip.i2c_read(3)[:2] == bytes([0xA0, 0x10])
    chip.i2c_write(bytes([0x12, 0x34]))  # not a command: status bit 1
    assert chip.status & 0x0002
