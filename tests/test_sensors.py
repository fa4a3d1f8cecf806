"""Drivers read real-shaped hardware (the fake libmraa binding); the sampler keeps time and isolates faults."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from agent.board import BoardError, MraaBoard
from agent.sensors import DRIVERS, Sensor, SensorError, system
from agent.sensors.analog import AnalogOptions
from agent.sensors.digital import DigitalOptions
from agent.sensors.system import SystemOptions
from conftest import FAKE_MRAA, Subscriber, agent_config


def make(kind: str, options: Any, board: Any, name: str = "s") -> Sensor:
    sensor = DRIVERS[kind](name, options, board)
    sensor.setup()
    return sensor


def test_analog_scales_the_10_bit_count_by_default(mraa):
    mraa._set_analog(0, 0.25)
    sensor = make("analog", AnalogOptions(pin=0, scale=0.5, offset=-50), MraaBoard(mraa))
    assert sensor.read() == round(0.25 * 1023) * 0.5 - 50


def test_analog_reads_12_bits_when_asked(mraa):
    mraa._set_analog(1, 0.25)
    sensor = make("analog", AnalogOptions(pin=1, bits=12), MraaBoard(mraa))
    assert sensor.read() == round(0.25 * 4095)


def test_analog_pin_that_does_not_exist_names_the_pin_and_mraas_reason(mraa):
    with pytest.raises(BoardError, match=r"analog pin A9: cannot open: Invalid AIO pin specified"):
        make("analog", AnalogOptions(pin=9), MraaBoard(mraa))


def test_analog_read_failure_is_a_board_error(mraa):
    sensor = make("analog", AnalogOptions(pin=2), MraaBoard(mraa))
    mraa._fail_reads("aio", 2)
    with pytest.raises(BoardError, match="analog pin A2: read failed"):
        sensor.read()


def test_digital_reads_the_level_and_can_invert_it(mraa):
    mraa._set_gpio(4, 1)
    board = MraaBoard(mraa)
    assert make("digital", DigitalOptions(pin=4), board).read() == 1
    assert make("digital", DigitalOptions(pin=4, active_low=True), board).read() == 0


def test_digital_read_failure_returned_as_a_code_is_a_board_error(mraa):
    sensor = make("digital", DigitalOptions(pin=7), MraaBoard(mraa))
    mraa._fail_reads("gpio", 7)
    with pytest.raises(BoardError, match="GPIO 7: read failed"):
        sensor.read()


def test_digital_pin_that_does_not_exist_is_a_board_error(mraa):
    with pytest.raises(BoardError, match="GPIO 99: cannot open"):
        make("digital", DigitalOptions(pin=99), MraaBoard(mraa))


def test_board_names_the_platform(mraa):
    assert MraaBoard(mraa).name == "Intel Edison (mraa v2.2.0)"


def test_system_cpu_temperature_comes_from_the_first_thermal_zone(tmp_path, monkeypatch):
    (tmp_path / "thermal_zone0").mkdir()
    (tmp_path / "thermal_zone0" / "temp").write_text("45500\n")
    monkeypatch.setattr(system, "THERMAL", tmp_path)
    assert make("system", SystemOptions(metric="cpu_temperature"), None).read() == 45.5


def test_system_cpu_temperature_without_a_thermal_zone_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(system, "THERMAL", tmp_path)
    with pytest.raises(SensorError, match="no readable thermal zone"):
        make("system", SystemOptions(metric="cpu_temperature"), None).read()


@pytest.mark.parametrize("metric", ["load1", "mem_available", "disk_free", "uptime"])
def test_system_metrics_read_this_linux(metric):
    assert make("system", SystemOptions(metric=metric), None).read() >= 0


def test_the_agent_on_mraa_publishes_what_the_pins_read_with_quality_when_not_good(certs, broker, run_agent):
    watcher = Subscriber(broker, certs)
    threading.Event().wait(0.3)
    cfg = agent_config(certs, broker.port, board="mraa", sensors=[
        {"name": "temperature", "type": "analog", "pin": 0, "interval": 0.5, "scale": 0.5, "offset": -50},
        {"name": "door", "type": "digital", "pin": 4, "interval": 0.5},
        {"name": "humid", "type": "analog", "pin": 2, "interval": 0.5, "range": [0, 100]},
        {"name": "broken", "type": "analog", "pin": 1, "interval": 0.5, "error_after": 1},
        # Not plugged in at boot: the agent starts anyway, says so, and keeps trying.
        {"name": "room", "type": "bme280", "interval": 0.5, "error_after": 1},
    ])
    agent = run_agent(cfg, env={"PYTHONPATH": str(FAKE_MRAA), "FAKE_MRAA_ANALOG": "0=0.25,2=0.5",
                                "FAKE_MRAA_GPIO": "4=1", "FAKE_MRAA_FAIL": "aio:1"})
    try:
        readings = {}
        while len(readings) < 7:
            # Sensors read in the same wake-up share a message.
            for reading in watcher.telemetry()["readings"]:
                readings.setdefault(reading["sensor"], reading)
    finally:
        watcher.close()
    assert readings["temperature"]["value"] == 256 * 0.5 - 50
    assert "quality" not in readings["temperature"]
    assert readings["door"]["value"] == 1
    assert readings["humid"]["value"] == 512 and readings["humid"]["quality"] == "out_of_range"
    broken = readings["broken"]
    assert broken["value"] is None and broken["quality"] == "error"
    assert "analog pin A1: read failed" in broken["error"]
    for value in ("temperature", "humidity", "pressure"):
        missing = readings["room." + value]
        assert missing["quality"] == "error" and "I2C bus 6 device 0x76" in missing["error"]
    agent.wait_for(r"sensor room: I2C bus 6 device 0x76: .* \(retrying\)")
    agent.wait_for(r"device thunder10 on Intel Edison \(mraa v2.2.0\)")
    assert agent.stop() == 0


def test_the_fake_is_the_only_mraa_here():
    # The agent's own `auto` board must fall back to simulation on a machine without libmraa.
    assert not (Path(__file__).parent.parent / "agent" / "mraa.py").exists()
