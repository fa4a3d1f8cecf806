"""The schedule: on time without drift, phases honoured, and one bad sensor never holds up the rest."""

from __future__ import annotations

import logging
import threading
import time
from typing import Dict, List, Optional, Tuple

from agent.config.sensor_config import ChannelConfig, SensorConfig
from agent.hardware.sensors import Sensor, SensorError, Value
from agent.sampling.processing import Processing
from agent.sampling.reading import ERROR, Sample
from agent.sampling.sampler import Alarm, Sampler

EPOCH = 1_700_000_000.0


class FakeTime:
    """A monotonic clock and a stop event in one: waiting advances the clock instead of sleeping."""

    def __init__(self, until: float) -> None:
        self.now = 0.0
        self.until = until

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    def is_set(self) -> bool:
        return self.now >= self.until

    def wait(self, timeout: Optional[float] = None) -> bool:
        if timeout is not None:
            self.now += timeout
        return self.is_set()


class Scripted(Sensor):
    """Reads that take time on the fake clock, or fail between two times, on cue."""

    # Its reads only move the fake clock: they never block, so the schedule's thread makes them
    # (in order, on the fake clock) as it does an analog pin's.
    blocking = False

    def __init__(self, clock: FakeTime, cost: float = 0.0, failing: Tuple[float, float] = (0, 0),
                 channels: Tuple[str, ...] = ("",)) -> None:
        super().__init__("scripted", None, None)  # type: ignore[arg-type]
        self.clock, self.cost, self.failing, self.keys = clock, cost, failing, channels
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def read_all(self) -> Dict[str, Value]:
        started = self.clock.now
        self.clock.now += self.cost
        if self.failing[0] <= started < self.failing[1]:
            raise SensorError("sensor unplugged")
        return {key: started for key in self.keys}


def config(name: str, interval: float, phase: float = 0.0, error_after: int = 3, oversample: int = 1,
           keys: Tuple[str, ...] = ("",), timeout: float = 10.0) -> SensorConfig:
    channels = tuple(ChannelConfig(k, name if not k else "%s.%s" % (name, k), None, Processing()) for k in keys)
    return SensorConfig(name, "scripted", interval, None, channels, phase=phase, timeout=timeout,
                        error_after=error_after, oversample=oversample)


def run(clock: FakeTime, sensors: List[Tuple[SensorConfig, Sensor]]) -> List[Sample]:
    samples: List[Sample] = []
    Sampler(sensors, samples.append, monotonic=clock.monotonic, wall=clock.wall).run(clock)  # type: ignore[arg-type]
    return samples


def times(samples: List[Sample], name: str) -> List[float]:
    return [round(s.ts - EPOCH, 6) for s in samples if s.sensor == name and s.quality != ERROR]


def test_no_drift_over_ten_thousand_intervals_even_when_reads_take_time():
    clock = FakeTime(until=10_000.0)
    samples = run(clock, [(config("a", 1.0), Scripted(clock, cost=0.013)),
                          (config("b", 0.7), Scripted(clock, cost=0.002))])
    a, b = times(samples, "a"), times(samples, "b")
    assert len(a) == 10_000
    # The 10,000th tick is still on the whole second, though every read costs 13 ms.
    assert all(abs(t - k) < 0.02 for k, t in enumerate(a))
    assert len(b) == 14_286
    assert all(abs(t - k * 0.7) < 0.02 for k, t in enumerate(b))


def test_phases_spread_sensors_on_the_same_interval():
    clock = FakeTime(until=5.0)
    samples = run(clock, [(config("a", 1.0), Scripted(clock)),
                          (config("b", 1.0, phase=0.25), Scripted(clock)),
                          (config("c", 1.0, phase=0.5), Scripted(clock))])
    assert times(samples, "a") == [0, 1, 2, 3, 4]
    assert times(samples, "b") == [0.25, 1.25, 2.25, 3.25, 4.25]
    assert times(samples, "c") == [0.5, 1.5, 2.5, 3.5, 4.5]


def test_a_slow_sensor_skips_missed_ticks_rather_than_bunching_them():
    clock = FakeTime(until=10.0)
    samples = run(clock, [(config("a", 1.0), Scripted(clock, cost=2.5))])
    # A reading is stamped when sampling starts.
    assert times(samples, "a") == [0.0, 3.0, 6.0, 9.0]


def test_a_multi_valued_sensor_publishes_each_value_under_its_own_name():
    clock = FakeTime(until=1.0)
    samples = run(clock, [(config("env", 1.0, keys=("temperature", "humidity")),
                           Scripted(clock, channels=("temperature", "humidity")))])
    assert [s.sensor for s in samples] == ["env.temperature", "env.humidity"]


def test_oversampling_averages_several_reads_into_one_value():
    clock = FakeTime(until=1.0)
    samples = run(clock, [(config("a", 1.0, oversample=4), Scripted(clock, cost=0.1))])
    assert len(samples) == 1
    value = samples[0].value
    assert value is not None
    assert abs(value - (0.0 + 0.1 + 0.2 + 0.3) / 4) < 1e-9


def test_a_failing_sensor_backs_off_reports_one_error_reading_and_recovers(caplog):
    clock = FakeTime(until=120.0)
    flaky = Scripted(clock, failing=(2, 40))
    with caplog.at_level(logging.INFO, logger="agent.sampling.sampler"):
        samples = run(clock, [(config("a", 1.0), flaky), (config("b", 1.0), Scripted(clock))])

    assert len(times(samples, "b")) == 120  # never held up
    errors = [s for s in samples if s.quality == ERROR]
    assert len(errors) == 1
    assert errors[0].sensor == "a" and errors[0].value is None and errors[0].error == "sensor unplugged"
    attempts = [t for t in times(samples, "a")]
    # Retries at 1, 2, 4, 8, 16 s after the first failure: fewer than one a second.
    assert attempts[:2] == [0, 1] and attempts[2] >= 40 and attempts[2] <= 40 + 33
    messages = [r.getMessage() for r in caplog.records]
    assert sum("sensor unplugged (retrying)" in m for m in messages) == 1
    # In the journal: `journalctl -u edison-agent SENSOR=a`.
    assert {getattr(r, "SENSOR", None) for r in caplog.records if "sensor a:" in r.getMessage()} == {"a"}
    assert any("reading again after 6 failed attempts" in m for m in messages), messages
    # After error_after failures the device is set up again, as a replugged part needs.
    assert flaky.setups == 2


def test_a_driver_bug_is_contained_to_its_sensor(caplog):
    class Buggy(Scripted):
        def read_all(self) -> Dict[str, Value]:
            raise ZeroDivisionError("division by zero")

    clock = FakeTime(until=3.0)
    samples = run(clock, [(config("a", 1.0), Buggy(clock)), (config("b", 1.0), Scripted(clock))])
    assert times(samples, "b") == [0, 1, 2]
    assert "ZeroDivisionError: division by zero" in caplog.text


def test_a_value_that_is_not_a_finite_number_is_a_failure_not_a_reading():
    class NotANumber(Scripted):
        def read_all(self) -> Dict[str, Value]:
            return {"": float("nan")}

    clock = FakeTime(until=10.0)
    samples = run(clock, [(config("a", 1.0, error_after=1), NotANumber(clock))])
    assert [s.quality for s in samples] == [ERROR]
    assert "non-finite" in (samples[0].error or "")


class Hanging(Sensor):
    """A read that blocks until released, like an I2C transaction on a stuck bus."""

    def __init__(self) -> None:
        super().__init__("hanging", None, None)  # type: ignore[arg-type]
        self.release = threading.Event()
        self.started = threading.Event()

    def read_all(self) -> Dict[str, Value]:
        self.started.set()
        self.release.wait(10)
        return {"": 1.0}


class Quick(Sensor):
    def __init__(self) -> None:
        super().__init__("quick", None, None)  # type: ignore[arg-type]

    def read_all(self) -> Dict[str, Value]:
        return {"": 2.0}


def test_a_hanging_read_and_a_failing_sensor_do_not_delay_the_others(caplog):
    samples: List[Sample] = []
    hanging = Hanging()
    failing = Scripted(FakeTime(0), failing=(-1, 1e9))
    sampler = Sampler([(config("hung", 0.05, timeout=0.2, error_after=1), hanging),
                       (config("broken", 0.05), failing),
                       (config("quick", 0.05), Quick())], samples.append)
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run, args=(stop,))
    with caplog.at_level(logging.INFO, logger="agent.sampling.sampler"):
        thread.start()
        time.sleep(1.0)
        hanging.release.set()
        time.sleep(0.2)
        stop.set()
        thread.join(5)

    quick = [s for s in samples if s.sensor == "quick"]
    gaps = [b.ts - a.ts for a, b in zip(quick, quick[1:])]
    assert len(quick) >= 20 and max(gaps) < 0.2, gaps
    hung_errors = [s for s in samples if s.sensor == "hung" and s.quality == ERROR]
    assert len(hung_errors) == 1 and "has not returned after" in (hung_errors[0].error or "")
    assert "the hung read returned after" in caplog.text
    assert [s for s in samples if s.sensor == "broken" and s.quality == ERROR]


def test_a_read_hung_past_its_timeout_is_an_error_at_once_whatever_error_after_says():
    # error_after counts failed reads; a hung read is one read that never ends: waiting for
    # error_after more timeouts would hide a dead bus for error_after times as long.
    samples: List[Sample] = []
    hanging = Hanging()
    sampler = Sampler([(config("hung", 0.05, timeout=0.2, error_after=5), hanging)], samples.append)
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not samples and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        hanging.release.set()
        stop.set()
        thread.join(5)
    assert samples and samples[0].quality == ERROR and "has not returned after" in (samples[0].error or "")


def test_the_loop_ticks_for_the_watchdog_even_when_no_sensor_is_due():
    clock = FakeTime(until=20.0)
    ticks: List[float] = []
    sampler = Sampler([(config("slow", 600.0), Scripted(clock))], lambda s: None,
                      monotonic=clock.monotonic, wall=clock.wall)
    sampler.run(clock, on_tick=lambda: ticks.append(clock.now), tick_interval=5.0)  # type: ignore[arg-type]
    assert ticks == [0.0, 5.0, 10.0, 15.0]


def test_what_a_wake_up_published_is_flushed_right_before_the_loop_sleeps():
    clock = FakeTime(until=30.0)
    events: List[Tuple[str, float]] = []
    sampler = Sampler([(config("t", 10.0), Scripted(clock))], lambda s: events.append(("sample", clock.now)),
                      monotonic=clock.monotonic, wall=clock.wall)
    sampler.run(clock, on_tick=lambda: events.append(("tick", clock.now)), tick_interval=10.0,  # type: ignore
                before_sleep=lambda: events.append(("flush", clock.now)))
    # One wake-up per reading: the health tick rides on it, the flush is the last thing before sleeping.
    assert events == [(kind, t) for t in (0.0, 10.0, 20.0) for kind in ("tick", "sample", "flush")]


def test_without_sensors_the_loop_only_ticks():
    clock = FakeTime(until=10.0)
    ticks: List[float] = []
    sampler = Sampler([], lambda s: None, monotonic=clock.monotonic, wall=clock.wall)
    sampler.run(clock, on_tick=lambda: ticks.append(clock.now), tick_interval=3.0)  # type: ignore[arg-type]
    assert ticks == [0.0, 3.0, 6.0, 9.0]


def test_quick_reads_stay_on_the_schedules_thread_and_blocking_ones_get_a_worker():
    threads: Dict[str, str] = {}

    class Probe(Sensor):
        def __init__(self, name: str, blocking: bool) -> None:
            super().__init__(name, None, None)  # type: ignore[arg-type]
            self.blocking = blocking  # type: ignore[misc]

        def read_all(self) -> Dict[str, Value]:
            threads[self.name] = threading.current_thread().name
            return {"": 1.0}

    stop = threading.Event()
    sampler = Sampler([(config("adc", 0.05), Probe("adc", blocking=False)),
                       (config("i2c", 0.05), Probe("i2c", blocking=True))], lambda s: None)
    runner = threading.Thread(target=sampler.run, args=(stop,), name="schedule")
    runner.start()
    time.sleep(0.3)
    stop.set()
    runner.join(5)
    sampler.close()
    assert threads == {"adc": "schedule", "i2c": "sensor-i2c"}


def test_closing_the_sampler_ends_its_worker_threads():
    stop = threading.Event()
    sampler = Sampler([(config("closing", 0.05), Quick())], lambda s: None)
    runner = threading.Thread(target=sampler.run, args=(stop,))
    runner.start()
    time.sleep(0.2)
    stop.set()
    runner.join(5)
    assert any(t.name == "sensor-closing" for t in threading.enumerate())
    sampler.close()
    time.sleep(0.2)
    # A reload builds a new sampler: the old one's threads must not pile up.
    assert not any(t.name == "sensor-closing" for t in threading.enumerate())


def test_the_alarm_wakes_the_schedule_at_a_ring_without_stopping_it_and_at_set_to_stop():
    alarm = Alarm()
    alarm.ring()  # rung before the wait: not lost
    assert alarm.wait(60) is False
    threading.Timer(0.05, alarm.ring).start()
    assert alarm.wait(60) is False and not alarm.is_set()
    threading.Timer(0.05, alarm.set).start()
    assert alarm.wait(60) is True and alarm.wait(60) is True  # set stays set
    alarm.clear()
    assert alarm.wait(0.01) is False  # the timeout alone
