"""htu21d: the TE HTU21D(F) driver against the fake libmraa and against its simulation.

Facts from the "HTU21D(F) Sensor" datasheet (MEAS HPC199): address 0x40 only; soft reset 0xFE
(under 15 ms); no-hold-master measurements 0xF3 (temperature) and 0xF5 (humidity), whose
maximum conversion times depend on the user register's resolution (0xE7 read, 0xE6 write,
bits 7 and 0); replies MSB, LSB, CRC-8 (x^8+x^5+x^4+1, init 0x00; the datasheet's examples
CRC(0xDC) = 0x79, CRC(0x683A) = 0x7C, CRC(0x4E85) = 0x6B); LSB bit 1 is '1' for a humidity
measurement; the status bits are cleared before T = -46.85 + 175.72 S/2^16 and
RH = -6 + 125 S/2^16 (examples: 0x683C -> 24.7 degC, 0x7C80 -> 54.8 %RH).
"""

from __future__ import annotations

import errno
from typing import Any, Dict, List, Optional

import pytest

import agent.hardware.simulated
from agent.hardware.board import BoardError, MraaBoard
from agent.hardware.sensors import htu21d
from agent.hardware.sensors.base import Channel, SensorError, Value
from agent.hardware.sensors.crc8 import HTU21D_INIT, crc8
from agent.hardware.sensors.htu21d import Htu21dOptions, Htu21dSensor
from agent.hardware.simulated import SimulatedBoard
from agent.hardware.simulated.htu21d import SimulatedHtu21d

NOON = 1_700_000_000.0

# The datasheet's CRC examples are whole replies, status bits included.
TEMPERATURE_REPLY = bytes([0x4E, 0x85, 0x6B])  # LSB bit 1 clear: a temperature
HUMIDITY_REPLY = bytes([0x68, 0x3A, 0x7C])  # LSB bit 1 set: a humidity


@pytest.fixture(autouse=True)
def waits(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """The driver's sleeps, recorded instead of slept."""
    recorded: List[float] = []
    monkeypatch.setattr(htu21d, "_sleep", recorded.append)
    return recorded


def reply(word: int) -> bytes:
    data = bytes([word >> 8, word & 0xFF])
    return data + bytes([crc8(data, HTU21D_INIT)])


class ScriptedHtu21d:
    """An HTU21D answering 0xF3 / 0xF5 with fixed replies and keeping a user register; a read
    with nothing to send is NACKed (EREMOTEIO), as the real part does."""

    def __init__(self, temperature: bytes = TEMPERATURE_REPLY, humidity: bytes = HUMIDITY_REPLY,
                 user: int = 0x02, writable: bool = True) -> None:
        self.temperature, self.humidity = temperature, humidity
        self.user, self.writable = user, writable
        self.writes: List[bytes] = []
        self._out = b""

    def i2c_write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._out = {0xF3: self.temperature, 0xF5: self.humidity, 0xE7: bytes([self.user])}.get(data[0], b"")
        if data[0] == 0xE6 and self.writable:
            self.user = data[1]

    def i2c_read(self, n: int) -> bytes:
        if not self._out:
            raise OSError(errno.EREMOTEIO, "Remote I/O error")
        data, self._out = self._out[:n], b""
        return data


def make(board: Any, **options: Any) -> Htu21dSensor:
    sensor = Htu21dSensor("climate", Htu21dOptions(**options), board)
    sensor.setup()
    return sensor


def part(mraa: Any, chip: Optional[ScriptedHtu21d] = None) -> ScriptedHtu21d:
    chip = chip or ScriptedHtu21d()
    mraa._add_i2c_device(6, 0x40, chip)
    return chip


# --- datasheet facts ------------------------------------------------------------------------


def test_crc_matches_the_datasheets_examples():
    assert crc8(bytes([0xDC]), HTU21D_INIT) == 0x79
    assert crc8(bytes([0x68, 0x3A]), HTU21D_INIT) == 0x7C
    assert crc8(bytes([0x4E, 0x85]), HTU21D_INIT) == 0x6B


def test_conversion_matches_the_datasheets_examples():
    assert round(htu21d.temperature(0x683C), 1) == 24.7
    assert round(htu21d.humidity(0x7C80), 1) == 54.8


def test_humidity_is_not_clamped_to_0_100():
    # The formula spans -6 to 119 %RH; the driver reports what the part measured.
    assert htu21d.humidity(0x0000) == -6.0
    assert htu21d.humidity(0xFFFC) == pytest.approx(118.99, abs=0.01)


def test_channels_are_temperature_and_humidity():
    assert Htu21dSensor.channels(Htu21dOptions()) == (Channel("temperature", "degC"), Channel("humidity", "%RH"))


# --- the driver on the fake mraa ---------------------------------------------------------------


def test_reads_the_datasheets_replies_with_status_bits_cleared(mraa, waits):
    chip = part(mraa)
    sensor = make(MraaBoard(mraa))
    assert sensor.read_all() == {
        "temperature": pytest.approx(-46.85 + 175.72 * 0x4E84 / 65536),  # about 7.05 degC
        "humidity": pytest.approx(-6.0 + 125.0 * 0x6838 / 65536),  # about 44.9 %RH
    }
    # Reset, read the user register (default already 12/14: nothing written), then measure.
    assert chip.writes == [b"\xfe", b"\xe7", b"\xf3", b"\xf5"]
    # 15 ms reset, 50 ms for 14-bit temperature, 16 ms for 12-bit humidity, each + 1 ms.
    assert waits == [pytest.approx(0.016), pytest.approx(0.051), pytest.approx(0.017)]


@pytest.mark.parametrize(("resolution", "bits", "temperature_wait", "humidity_wait"), [
    ("8/12", 0x01, 0.013, 0.003), ("10/13", 0x80, 0.025, 0.005), ("11/11", 0x81, 0.007, 0.008)])
def test_resolution_is_written_keeping_the_other_bits_and_sets_the_waits(
        mraa, waits, resolution, bits, temperature_wait, humidity_wait):
    chip = part(mraa, ScriptedHtu21d(user=0x3A))  # reserved bits 3-5 set, OTP bit 1 set
    sensor = make(MraaBoard(mraa), resolution=resolution)
    assert chip.writes[2] == bytes([0xE6, 0x3A | bits])
    assert chip.user == 0x3A | bits
    waits.clear()
    sensor.read_all()
    assert waits == [pytest.approx(temperature_wait + 0.001), pytest.approx(humidity_wait + 0.001)]


def test_a_user_register_that_does_not_take_the_resolution_fails_setup(mraa):
    part(mraa, ScriptedHtu21d(writable=False))
    with pytest.raises(SensorError, match=r"user register reads 0x02 after writing 0x83: is this an HTU21D\?"):
        make(MraaBoard(mraa), resolution="11/11")


def test_temperature_crc_mismatch_names_the_word(mraa):
    part(mraa, ScriptedHtu21d(temperature=bytes([0x4E, 0x85, 0x6C])))
    with pytest.raises(SensorError, match=r"htu21d temperature word 0x4e85: CRC 0x6c received, 0x6b expected"):
        make(MraaBoard(mraa)).read_all()


def test_humidity_crc_mismatch_names_the_word(mraa):
    part(mraa, ScriptedHtu21d(humidity=bytes([0x69, 0x3A, 0x7C])))
    with pytest.raises(SensorError, match=r"htu21d humidity word 0x693a: CRC 0x7c received"):
        make(MraaBoard(mraa)).read_all()


def test_a_humidity_answer_to_a_temperature_command_is_refused(mraa):
    part(mraa, ScriptedHtu21d(temperature=HUMIDITY_REPLY))
    with pytest.raises(SensorError, match=r"asked for temperature, but the status bits of 0x683a say the part "
                                          r"measured humidity"):
        make(MraaBoard(mraa)).read_all()


def test_a_temperature_answer_to_a_humidity_command_is_refused(mraa):
    part(mraa, ScriptedHtu21d(humidity=reply(0x6838)))  # valid CRC, status bit 1 clear
    with pytest.raises(SensorError, match=r"asked for humidity, but the status bits of 0x6838 say the part "
                                          r"measured temperature"):
        make(MraaBoard(mraa)).read_all()


def test_no_device_at_the_address_names_bus_and_address(mraa):
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x40: write byte 0xfe: unspecified error"):
        make(MraaBoard(mraa))


def test_failing_reads_are_board_errors(mraa):
    part(mraa)
    sensor = make(MraaBoard(mraa))
    mraa._fail_reads("i2c", 6)
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x40: read 3 bytes failed"):
        sensor.read_all()


def test_failing_user_register_read_fails_setup(mraa):
    part(mraa)
    mraa._fail_reads("i2c", 6)
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x40: read register 0xe7 failed"):
        make(MraaBoard(mraa))


def test_a_part_that_nacks_the_read_is_a_board_error(mraa):
    part(mraa, ScriptedHtu21d(humidity=b""))  # conversion not done: the read is NACKed
    with pytest.raises(BoardError, match=r"I2C bus 6 device 0x40: read 3 bytes failed"):
        make(MraaBoard(mraa)).read_all()


def test_options_are_checked():
    assert Htu21dSensor.check_options(Htu21dOptions()) == []
    problems = dict(Htu21dSensor.check_options(Htu21dOptions(address=0x41, resolution="12/12")))
    assert problems["address"] == "0x41 is not an HTU21D address: the part always answers at 0x40"
    assert problems["resolution"] == ("'12/12' is not one of: 12/14, 8/12, 10/13, 11/11 "
                                      "(humidity/temperature bits)")


# --- the simulated part ------------------------------------------------------------------------


def fixed_clock() -> float:
    return NOON


def plausible(values: Dict[str, Value]) -> bool:
    return 15.0 < values["temperature"] < 27.0 and 25.0 < values["humidity"] < 65.0


def test_simulation_on_the_simulated_board(monkeypatch):
    monkeypatch.setitem(agent.hardware.simulated.CHIPS, "htu21d", lambda seed: SimulatedHtu21d(seed, clock=fixed_clock))
    sensor = make(SimulatedBoard())
    assert all(plausible(sensor.read_all()) for _ in range(20))


def test_simulation_is_the_same_for_the_same_seed(monkeypatch):
    monkeypatch.setitem(agent.hardware.simulated.CHIPS, "htu21d", lambda seed: SimulatedHtu21d(seed, clock=fixed_clock))
    one, other = make(SimulatedBoard()), make(SimulatedBoard())
    assert [one.read_all() for _ in range(5)] == [other.read_all() for _ in range(5)]


@pytest.mark.parametrize("resolution", ["12/14", "8/12", "10/13", "11/11"])
def test_simulation_through_the_fake_mraa_at_each_resolution(mraa, resolution):
    chip = SimulatedHtu21d(seed=3, clock=fixed_clock)
    mraa._add_i2c_device(6, 0x40, chip)
    sensor = make(MraaBoard(mraa), resolution=resolution)
    assert chip.user & 0x81 == htu21d.RESOLUTIONS[resolution][0]
    assert plausible(sensor.read_all())


def test_simulation_answers_like_the_part():
    chip = SimulatedHtu21d(seed=1, clock=fixed_clock)
    with pytest.raises(OSError):  # nothing measured: NACK
        chip.i2c_read(3)
    chip.i2c_write(bytes([0xE6, 0x01]))  # 8-bit humidity, 12-bit temperature
    chip.i2c_write(bytes([0xF5]))
    data = chip.i2c_read(3)
    assert crc8(data[0:2], HTU21D_INIT) == data[2]
    assert data[1] & 0x03 == 0x02 and data[1] & 0xFC == 0  # humidity status; 8 bits leave the LSB empty
    with pytest.raises(OSError):  # a result is read once
        chip.i2c_read(3)
    chip.i2c_write(bytes([0xE6, 0x07]))  # heater on
    chip.i2c_write(bytes([0xFE]))  # a soft reset restores the defaults except the heater bit
    chip.i2c_write(bytes([0xE7]))
    assert chip.i2c_read(1) == bytes([0x06])
