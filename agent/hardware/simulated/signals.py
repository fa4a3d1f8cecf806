"""Plausible, repeatable sensor signals for the simulated board: a day curve, noise, rare spikes."""

from __future__ import annotations

import math
import random
import time
from typing import Callable

Clock = Callable[[], float]


class Signal:
    """mean + a daily swing peaking at `peak_hour` (UTC) + noise, with an occasional spike.

    The same seed gives the same noise and spikes for the same sequence of reads, so a demo
    or a test sees the same room every time.
    """

    def __init__(self, seed: int, mean: float, swing: float = 0.0, noise: float = 0.0,
                 peak_hour: float = 15.0, spike_chance: float = 0.0, spike: float = 0.0,
                 clock: Clock = time.time) -> None:
        self._rng = random.Random(seed)
        self.mean, self.swing, self.noise = mean, swing, noise
        self.peak_hour, self.spike_chance, self.spike = peak_hour, spike_chance, spike
        self._clock = clock

    def __call__(self) -> float:
        hours = (self._clock() / 3600.0) % 24.0
        value = self.mean + self.swing * math.cos(2 * math.pi * (hours - self.peak_hour) / 24.0)
        value += self._rng.gauss(0.0, self.noise) if self.noise else 0.0
        if self.spike_chance and self._rng.random() < self.spike_chance:
            value += self.spike * self._rng.choice((-1.0, 1.0))
        return value


def room_temperature(seed: int, clock: Clock = time.time) -> Signal:
    """The one room every simulated thermometer is in: about 21 degC, warmest mid-afternoon."""
    return Signal(seed=seed, mean=21.0, swing=2.0, noise=0.05, peak_hour=15.0, spike_chance=0.002, spike=1.5,
                  clock=clock)


def room_humidity(seed: int, clock: Clock = time.time) -> Signal:
    """Its relative humidity: about 45 %RH, highest before dawn, when the room is coolest."""
    return Signal(seed=seed, mean=45.0, swing=5.0, noise=0.3, peak_hour=4.0, spike_chance=0.002, spike=8.0,
                  clock=clock)


class Rate:
    """Events at `per_second` on average (Poisson), counted between two calls."""

    def __init__(self, seed: int, per_second: float, clock: Clock = time.monotonic) -> None:
        self._rng = random.Random(seed)
        self.per_second = per_second
        self._clock = clock
        self._last = clock()

    def __call__(self) -> int:
        now = self._clock()
        elapsed, self._last = max(0.0, now - self._last), now
        expected = self.per_second * elapsed
        # Normal approximation of a Poisson count: cheap, and never negative.
        return max(0, int(round(self._rng.gauss(expected, math.sqrt(expected)))) if expected else 0)
