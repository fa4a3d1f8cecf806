"""A pulse counter on a GPIO pin (rain gauge, anemometer, flow or energy meter): counts
edges through mraa's interrupt thread and reports them per reading, as a count or a rate."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from agent.hardware.board import EDGES, PulseCounter
from agent.hardware.sensors.base import Sensor, SensorError, Value

REPORTS = ("count", "rate")

# The clock rates are measured on: monotonic, so a wall-clock step (NTP at boot) cannot make a
# rate negative or huge. A module-level name so tests can step it instead of sleeping.
monotonic: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class CounterOptions:
    pin: int
    edge: str = "rising"
    # count: pulses since the last reading; rate: pulses per second over that time.
    report: str = "count"
    # What one pulse is worth, e.g. 0.2794 (mm of rain per tip of the common tipping bucket),
    # or 2.4 with report: rate (km/h per Hz of the common cup anemometer).
    per_pulse: float = 1.0


class CounterSensor(Sensor):
    blocking = False
    Options = CounterOptions
    options: CounterOptions
    # Two reads per interval would split one interval's pulses between them.
    can_oversample = False
    _counter: Optional[PulseCounter] = None
    _since: float = 0.0

    @classmethod
    def check_options(cls, options: CounterOptions) -> List[Tuple[str, str]]:
        problems = []
        if options.pin < 0:
            problems.append(("pin", "%d is not a GPIO pin number" % options.pin))
        if options.edge not in EDGES:
            problems.append(("edge", "%r is not one of: %s" % (options.edge, ", ".join(EDGES))))
        if options.report not in REPORTS:
            problems.append(("report", "%r is not one of: %s" % (options.report, ", ".join(REPORTS))))
        if not (math.isfinite(options.per_pulse) and options.per_pulse > 0):
            problems.append(("per_pulse", "%r must be a positive number (what one pulse is worth)"
                             % options.per_pulse))
        return problems

    @classmethod
    def default_unit(cls, options: CounterOptions) -> Optional[str]:
        # With a per_pulse factor the unit is whatever it converts to (mm, km/h, litres): the
        # config's `unit` says so; the driver cannot know.
        if options.per_pulse != 1.0:
            return None
        return "pulses" if options.report == "count" else "pulses/s"

    def setup(self) -> None:
        # The sampler sets a sensor up again after failures without closing it first: release
        # the old interrupt, or two isr threads would count the same edges.
        self.close()
        self._counter = self.board.pulse_counter(self.options.pin, self.options.edge)
        self._since = monotonic()

    def read(self) -> Value:
        if self._counter is None:
            raise SensorError("GPIO %d: the pulse counter is not set up" % self.options.pin)
        if self.options.report == "count":
            pulses = self._counter.take()
            return pulses if self.options.per_pulse == 1.0 else pulses * self.options.per_pulse
        now = monotonic()
        elapsed = now - self._since
        if elapsed <= 0:
            # Checked before take(): the pulses stay counted for the next reading.
            raise SensorError("GPIO %d: no time has passed since the last reading, so there is no rate"
                              % self.options.pin)
        pulses = self._counter.take()
        self._since = now
        return pulses / elapsed * self.options.per_pulse

    def close(self) -> None:
        counter, self._counter = self._counter, None
        if counter is not None:
            counter.close()
