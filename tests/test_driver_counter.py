"""The `counter` driver: pulses on a GPIO pin, counted on libmraa's interrupt thread (the fake
mraa's `_pulse` fires the isr callback from a thread of its own, as libmraa does)."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from typing import Any

import pytest

from agent.hardware.board import BoardError, MraaBoard
from agent.hardware.sensors import counter
from agent.hardware.sensors.base import SensorError
from agent.hardware.sensors.counter import CounterOptions, CounterSensor
from agent.hardware.simulated import SimulatedBoard
from conftest import FAKE_MRAA, Subscriber, agent_config


class SteppedClock:
    """time.monotonic for rate tests: moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SteppedClock:
    stepped = SteppedClock()
    monkeypatch.setattr(counter, "monotonic", stepped)
    return stepped


def make(options: CounterOptions, board: Any) -> CounterSensor:
    sensor = CounterSensor("rain", options, board)
    sensor.setup()
    return sensor


def test_the_first_reading_counts_the_pulses_since_setup_and_each_reading_those_since_the_last(mraa):
    assert mraa._pulse(4, 3) == 0, "nothing listens before setup"
    sensor = make(CounterOptions(pin=4), MraaBoard(mraa))
    mraa._pulse(4, 5)
    assert sensor.read() == 5
    assert sensor.read() == 0
    mraa._pulse(4, 2)
    assert sensor.read() == 2


def test_a_count_is_an_int_and_per_pulse_scales_it(mraa):
    board = MraaBoard(mraa)
    tips = make(CounterOptions(pin=4), board)
    rain = make(CounterOptions(pin=5, per_pulse=0.2794), board)
    mraa._pulse(4, 10)
    mraa._pulse(5, 10)
    assert tips.read() == 10 and isinstance(tips.read(), int)
    assert rain.read() == pytest.approx(2.794)


def test_rising_is_the_default_edge_and_falling_edges_are_not_counted(mraa):
    sensor = make(CounterOptions(pin=4), MraaBoard(mraa))
    mraa._pulse(4, 3, edge=mraa.EDGE_FALLING)
    mraa._pulse(4, 2, edge=mraa.EDGE_RISING)
    assert sensor.read() == 2


def test_edge_falling_and_both(mraa):
    board = MraaBoard(mraa)
    falling = make(CounterOptions(pin=4, edge="falling"), board)
    both = make(CounterOptions(pin=5, edge="both"), board)
    for pin in (4, 5):
        mraa._pulse(pin, 3, edge=mraa.EDGE_FALLING)
        mraa._pulse(pin, 2, edge=mraa.EDGE_RISING)
    assert falling.read() == 3
    assert both.read() == 5


def test_rate_is_pulses_per_second_since_the_last_reading(mraa, clock):
    sensor = make(CounterOptions(pin=4, report="rate"), MraaBoard(mraa))
    mraa._pulse(4, 10)
    clock.now += 5.0
    assert sensor.read() == pytest.approx(2.0)
    mraa._pulse(4, 6)
    clock.now += 2.0
    assert sensor.read() == pytest.approx(3.0)
    clock.now += 10.0
    assert sensor.read() == 0.0


def test_rate_times_per_pulse_gives_wind_speed(mraa, clock):
    # The common cup anemometer: 2.4 km/h per pulse per second.
    sensor = make(CounterOptions(pin=4, report="rate", per_pulse=2.4), MraaBoard(mraa))
    mraa._pulse(4, 20)
    clock.now += 10.0
    assert sensor.read() == pytest.approx(4.8)


def test_a_rate_with_no_time_elapsed_is_refused_and_keeps_its_pulses(mraa, clock):
    sensor = make(CounterOptions(pin=4, report="rate"), MraaBoard(mraa))
    mraa._pulse(4, 4)
    with pytest.raises(SensorError, match="GPIO 4: no time has passed since the last reading"):
        sensor.read()
    clock.now += 2.0
    assert sensor.read() == pytest.approx(2.0)


def test_no_pulse_is_lost_while_readings_race_the_isr_thread(mraa):
    sensor = make(CounterOptions(pin=4), MraaBoard(mraa))
    bursts, per_burst = 100, 5

    def fire() -> None:
        for _ in range(bursts):
            mraa._pulse(4, per_burst)

    firing = threading.Thread(target=fire)
    firing.start()
    total, readings = 0, 0
    while firing.is_alive():
        total += int(sensor.read())
        readings += 1
    firing.join()
    total += int(sensor.read())
    assert total == bursts * per_burst
    assert readings > 1, "the readings did not overlap the pulses"


def test_an_edge_the_pin_cannot_interrupt_on_is_a_board_error_naming_pin_and_edge(mraa):
    mraa._set_edge_supported(7, False)
    sensor = CounterSensor("wind", CounterOptions(pin=7, edge="falling"), MraaBoard(mraa))
    with pytest.raises(BoardError, match="GPIO 7: interrupt on falling edges: feature not implemented"):
        sensor.setup()


def test_a_pin_that_does_not_exist_is_a_board_error(mraa):
    sensor = CounterSensor("wind", CounterOptions(pin=42), MraaBoard(mraa))
    with pytest.raises(BoardError, match="GPIO 42: cannot open: Invalid GPIO pin specified"):
        sensor.setup()


def test_every_edge_is_counted_after_garbage_collection_because_the_callback_is_kept_alive(mraa):
    # libmraa borrows the callback: if the agent kept no reference, a collection would free it
    # and the next edge would crash the agent (the fake counts nothing and records the error).
    sensor = make(CounterOptions(pin=4), MraaBoard(mraa))
    gc.collect()
    for _ in range(3):
        mraa._pulse(4, 7)
        gc.collect()
    assert sensor.read() == 21
    assert mraa._isr_errors == []
    sensor.close()


def test_the_counter_holds_its_callback_while_armed_and_lets_go_of_it_when_closed(mraa):
    counter = MraaBoard(mraa).pulse_counter(4)
    assert counter.callback is not None
    held = weakref.ref(counter.callback)
    gc.collect()
    assert held() is not None, "freed while the interrupt is armed"
    counter.close()
    gc.collect()
    assert held() is None, "kept after close: a reload would leak one callback per counter"
    assert mraa._pulse(4, 1) == 0


def test_close_ends_the_interrupt(mraa):
    sensor = make(CounterOptions(pin=4), MraaBoard(mraa))
    sensor.close()
    assert mraa._pulse(4, 3) == 0, "an isr still listens after close (isrExit not called)"
    sensor.close()  # twice is harmless
    with pytest.raises(SensorError, match="not set up"):
        sensor.read()


def test_setting_up_again_without_close_leaves_one_interrupt(mraa):
    # The sampler sets a failing sensor up again without closing it.
    sensor = make(CounterOptions(pin=4), MraaBoard(mraa))
    sensor.setup()
    assert mraa._pulse(4, 3) == 3
    assert sensor.read() == 3


@pytest.mark.parametrize("options, key", [
    (CounterOptions(pin=-1), "pin"),
    (CounterOptions(pin=4, edge="up"), "edge"),
    (CounterOptions(pin=4, report="total"), "report"),
    (CounterOptions(pin=4, per_pulse=0.0), "per_pulse"),
    (CounterOptions(pin=4, per_pulse=float("nan")), "per_pulse"),
])
def test_options_the_driver_refuses(options, key):
    assert [k for k, _ in CounterSensor.check_options(options)] == [key]


def test_defaults_pass_and_units_follow_report_unless_per_pulse_converts():
    assert CounterSensor.check_options(CounterOptions(pin=4)) == []
    assert CounterSensor.default_unit(CounterOptions(pin=4)) == "pulses"
    assert CounterSensor.default_unit(CounterOptions(pin=4, report="rate")) == "pulses/s"
    assert CounterSensor.default_unit(CounterOptions(pin=4, per_pulse=0.2794)) is None
    assert CounterSensor.can_oversample is False


def test_counts_and_rates_on_the_simulated_board():
    board = SimulatedBoard()
    count = make(CounterOptions(pin=2), board)
    rate = make(CounterOptions(pin=3, report="rate"), board)
    time.sleep(0.05)
    counts = [count.read() for _ in range(3)]
    assert all(isinstance(c, int) and c >= 0 for c in counts)
    # About two pulses a second: over a twentieth of a second, a handful at most.
    assert 0.0 <= rate.read() < 200.0
    count.close()
    rate.close()


def test_a_counter_in_the_agent_on_mraa_counts_every_interrupt_without_crashing(certs, broker, run_agent):
    # The agent's counter lives in a hardware process of its own; the fake delivers 50 edges a
    # second there. With the callback left to die, libmraa crashes the agent or counts nothing.
    watcher = Subscriber(broker, certs)
    threading.Event().wait(0.3)
    cfg = agent_config(certs, broker.port, board="mraa", sensors=[
        {"name": "wind", "type": "counter", "pin": 4, "interval": 0.5}])
    agent = run_agent(cfg, env={"PYTHONPATH": str(FAKE_MRAA), "FAKE_MRAA_PULSES": "4=50"})
    try:
        counts = [watcher.telemetry()["readings"][0]["value"] for _ in range(6)]
    finally:
        watcher.close()
    # 25 a reading at the schedule's pace; any reading after the first with nothing is a lost interrupt.
    assert all(count > 0 for count in counts[1:]), counts
    assert agent.stop() == 0
