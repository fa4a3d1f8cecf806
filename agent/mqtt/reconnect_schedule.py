"""When to try again after an established connection was lost (issue 19 item 6).

A broker that goes away drops every board in the same instant. Each board then draws its place
`u` in [0, 1) once, and every attempt falls at that place in its window: the first window is
`spread` seconds wide and each failed attempt doubles it (up to max_delay), AWS-style exponential
growth with the jitter drawn per outage rather than per attempt. Whenever the broker comes back,
each board's next attempt is at its own place in the window in progress, so the fleet arrives as
evenly as its places are spread. Full jitter redrawn at every attempt (what the session did
before) piles up instead: the boards whose early attempts failed retry on short windows, and land
together just after the broker returns (22-26% of 50 boards in one second after a 10 s outage).

Attempt k (from 0) is due at loss + min_delay + S * (2^k - 1) + u * S * 2^k while windows are
uncapped: consecutive attempts are at least `spread` apart."""

from __future__ import annotations

import random
from typing import Optional


class AfterLoss:
    def __init__(self, min_delay: float, max_delay: float, spread: float, rng: random.Random,
                 lost_at: float) -> None:
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._spread = spread
        self._place = rng.random()
        self._window_start = lost_at + min_delay
        self._window = min(max_delay, spread)

    def next_delay(self, now: float) -> float:
        """Seconds from `now` (monotonic) to the next attempt; moves on to the following window."""
        due = self._window_start + self._place * self._window
        self._window_start += self._window
        self._window = min(self._max_delay, self._window * 2)
        # An attempt that itself took long (a connect timeout) must not be followed at once.
        return max(self._min_delay if due < now else 0.0, due - now)


def backoff_delay(attempt: int, min_delay: float, max_delay: float, rng: random.Random,
                  spread: Optional[float] = None) -> float:
    """Full jitter between min_delay and an exponential cap, so a fleet does not reconnect in step.

    `spread` is for the first attempt after an established connection was lost. A broker restart
    drops every board in the same instant, and a cap of 2 x min_delay would bring them all back
    within one second; that attempt is drawn from a window `spread` seconds wide instead (never
    beyond max_delay).
    """
    if spread is not None:
        cap = min(max_delay, min_delay + spread)
    else:
        cap = min(max_delay, min_delay * (2 ** min(attempt, 30)))
    return rng.uniform(min_delay, max(min_delay, cap))
