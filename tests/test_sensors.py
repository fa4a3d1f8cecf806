"""Drivers read real-shaped hardware (the fake libmraa binding); the sampler keeps time and isolates faults."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest

from agent.board import BoardError, MraaBoard
from agent.config import SensorConfig
from agent.sampler import Sampler
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


class FakeTime:
    """A monotonic clock and stop event in one: waiting advances the clock instead of sleeping."""

    def __init__(self, until: float) -> None:
        self.now = 1000.0
        self.until = until

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now - 1000.0

    def is_set(self) -> bool:
        return self.now - 1000.0 >= self.until

    def wait(self, timeout: Optional[float] = None) -> bool:
        if timeout is None:
            return True
        self.now += timeout
        return self.is_set()


class Scripted(Sensor):
    """A sensor whose reads take time on the fake clock, or fail, on cue."""

    Options = DigitalOptions

    def __init__(self, clock: FakeTime, cost: float = 0.0, failing: Tuple[float, float] = (0, 0)) -> None:
        super().__init__("scripted", None, None)  # type: ignore[arg-type]
        self.clock, self.cost, self.failing = clock, cost, failing

    def read(self) -> float:
        self.clock.now += self.cost
        t = self.clock.now - 1000.0
        if self.failing[0] <= t < self.failing[1]:
            raise SensorError("sensor unplugged")
        return t


def run_sampler(clock: FakeTime, sensors: List[Tuple[float, Sensor]]) -> List[Tuple[str, float]]:
    samples: List[Tuple[str, float]] = []
    configs = [(SensorConfig("s%d" % i, "digital", interval, None, None), sensor)
               for i, (interval, sensor) in enumerate(sensors)]
    Sampler(configs, lambda name, value, unit, ts: samples.append((name, ts - 1_700_000_000.0)),
            monotonic=clock.monotonic, wall=clock.wall).run(clock)  # type: ignore[arg-type]
    return samples


def test_each_sensor_keeps_its_own_interval_without_drift():
    clock = FakeTime(until=10.0)
    samples = run_sampler(clock, [(1.0, Scripted(clock, cost=0.01)), (2.5, Scripted(clock))])
    s0 = [round(ts, 6) for name, ts in samples if name == "s0"]
    s1 = [round(ts, 6) for name, ts in samples if name == "s1"]
    # Each read costs 10 ms, yet the 10th tick is still on the whole second.
    assert [round(t) for t in s0] == list(range(0, 10))
    assert all(abs(t - round(t)) < 0.05 for t in s0)
    assert [round(t, 1) for t in s1] == [0.0, 2.5, 5.0, 7.5]


def test_a_slow_sensor_skips_missed_ticks_rather_than_bunching_them():
    clock = FakeTime(until=10.0)
    samples = run_sampler(clock, [(1.0, Scripted(clock, cost=2.5))])
    # A reading is stamped when sampling starts.
    starts = [round(ts, 6) for _, ts in samples]
    assert starts == [0.0, 3.0, 6.0, 9.0]


def test_a_failing_sensor_is_logged_once_retried_and_never_stalls_the_others(caplog):
    clock = FakeTime(until=10.0)
    with caplog.at_level(logging.INFO, logger="agent.sampler"):
        samples = run_sampler(clock, [(1.0, Scripted(clock, failing=(2, 6))), (1.0, Scripted(clock))])
    assert sum(1 for name, _ in samples if name == "s1") == 10
    assert sum(1 for name, _ in samples if name == "s0") == 6
    failures = [r.message for r in caplog.records if "sensor unplugged" in r.message]
    assert len(failures) == 2  # once when it broke, once in "reading again after: ..."
    assert "will retry every 1 s" in failures[0]
    assert "reading again" in failures[1]


def test_a_driver_bug_is_contained_to_its_sensor(caplog):
    class Buggy(Scripted):
        def read(self) -> float:
            raise ZeroDivisionError("division by zero")

    clock = FakeTime(until=3.0)
    samples = run_sampler(clock, [(1.0, Buggy(clock)), (1.0, Scripted(clock))])
    assert [name for name, _ in samples] == ["s1", "s1", "s1"]
    assert "ZeroDivisionError: division by zero" in caplog.text


def test_the_agent_on_mraa_publishes_what_the_pins_read(certs, broker, run_agent):
    watcher = Subscriber(broker, certs)
    threading.Event().wait(0.3)
    cfg = agent_config(certs, broker.port, board="mraa", sensors=[
        {"name": "temperature", "type": "analog", "pin": 0, "interval": 0.5, "scale": 0.5, "offset": -50},
        {"name": "door", "type": "digital", "pin": 4, "interval": 0.5},
        {"name": "broken", "type": "analog", "pin": 1, "interval": 0.5},
    ])
    agent = run_agent(cfg, env={"PYTHONPATH": str(FAKE_MRAA), "FAKE_MRAA_ANALOG": "0=0.25",
                                "FAKE_MRAA_GPIO": "4=1", "FAKE_MRAA_FAIL": "aio:1"})
    try:
        values = {}
        while len(values) < 2:
            reading = watcher.telemetry()["readings"][0]
            values[reading["sensor"]] = reading["value"]
    finally:
        watcher.close()
    assert values == {"temperature": 256 * 0.5 - 50, "door": 1}
    agent.wait_for(r"device thunder10 on Intel Edison \(mraa v2.2.0\)")
    agent.wait_for(r"sensor broken: analog pin A1: read failed")
    assert agent.stop() == 0


def test_the_fake_is_the_only_mraa_here():
    # The agent's own `auto` board must fall back to simulation on a machine without libmraa.
    assert not (Path(__file__).parent.parent / "agent" / "mraa.py").exists()
