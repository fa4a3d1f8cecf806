"""What happens to a channel's raw value before it is published: filter, calibrate, range, deadband.

Order matters and follows the signal: a filter smooths raw samples (so a median rejects a
spike before calibration can amplify it), calibration maps to physical units, the range
check marks (never drops, never clamps) what is implausible, and the deadband decides
whether the change is worth a message.
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass
from typing import Deque, Optional, Tuple

from agent.hardware.sensors import Value
from agent.sampling.reading import GOOD, OUT_OF_RANGE


@dataclass(frozen=True)
class Calibration:
    """Linear (`scale`, `offset`) or a polynomial c0 + c1*x + c2*x^2 + ..."""

    scale: float = 1.0
    offset: float = 0.0
    polynomial: Optional[Tuple[float, ...]] = None

    def apply(self, x: float) -> float:
        if self.polynomial is not None:
            result = 0.0
            for c in reversed(self.polynomial):  # Horner: fewer multiplications, less rounding
                result = result * x + c
            return result
        return x * self.scale + self.offset


@dataclass(frozen=True)
class Filter:
    kind: str  # "median" or "mean"
    size: int


@dataclass(frozen=True)
class Deadband:
    """Publish only when the value moved more than `abs`, or more than `pct` percent of the last
    published value; with neither, on any change. Always after `max_silence` seconds."""

    abs: Optional[float] = None
    pct: Optional[float] = None
    max_silence: Optional[float] = 300.0


@dataclass(frozen=True)
class Processing:
    calibration: Optional[Calibration] = None
    filter: Optional[Filter] = None
    deadband: Optional[Deadband] = None
    range: Optional[Tuple[float, float]] = None


class Pipeline:
    """One channel's processing state. Not thread-safe: the sampler never reads a sensor twice at once."""

    def __init__(self, spec: Processing) -> None:
        self.spec = spec
        self._window: Deque[float] = collections.deque(maxlen=spec.filter.size if spec.filter else 1)
        self._last: Optional[Tuple[Value, str, float]] = None

    def process(self, raw: Value, now: float) -> Optional[Tuple[Value, str]]:
        """(value, quality) to publish, or None when the deadband holds it back. `now` is monotonic."""
        value: Value = raw
        spec = self.spec
        if spec.filter is not None:
            self._window.append(raw)
            if spec.filter.kind == "median":
                value = statistics.median(self._window)
            else:
                value = statistics.fmean(self._window)
        if spec.calibration is not None:
            value = spec.calibration.apply(value)
        quality = GOOD
        if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
            quality = OUT_OF_RANGE
        if spec.deadband is not None and not self._moved(value, quality, now, spec.deadband):
            return None
        self._last = (value, quality, now)
        return value, quality

    def _moved(self, value: Value, quality: str, now: float, band: Deadband) -> bool:
        if self._last is None:
            return True
        last, last_quality, last_at = self._last
        if quality != last_quality:
            return True
        if band.max_silence is not None and now - last_at >= band.max_silence:
            return True
        change = abs(value - last)
        if band.abs is None and band.pct is None:
            return change > 0
        if band.abs is not None and change > band.abs:
            return True
        return band.pct is not None and change > abs(last) * band.pct / 100.0

    def forget(self) -> None:
        """After a failure the next good value is news: publish it whatever the deadband says."""
        self._last = None
