"""Readings the spool let go without delivery: counted by cause, each episode logged once.

The queue decides what goes (agent/delivery/queue.py); this keeps the bounds it decides by,
the counts, and the log lines, which are said after the queue's lock is released (a log
handler may be slow: the journal, a full pipe).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence, Tuple

FULL = "full"
AGE = "age"
CORRUPT = "corrupt"
REFUSED = "refused"
# An episode of drops for memory while commits fail (counted as FULL).
MEMORY = "memory"
# An episode is over when nothing went for this long (no flapping between two lines).
EPISODE_QUIET = 60.0

LogLine = Tuple[int, str, Tuple[Any, ...]]


class Drops:
    """The bounds (max_bytes, max_age), what was dropped for each cause, and the lines still to log.

    Not thread-safe by itself: its owner (the queue) calls it under its own lock only."""

    def __init__(self, max_bytes: int, max_age: float) -> None:
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._counts = {FULL: 0, AGE: 0, CORRUPT: 0, REFUSED: 0}
        self._episodes: Dict[str, int] = {}
        self._last_age_drop = 0.0
        self._lines: List[LogLine] = []

    def cap(self, limit: int) -> None:
        """No file to hold the readings: memory bounds them."""
        self.max_bytes = min(self.max_bytes, limit)

    def count(self, cause: str, number: int = 1) -> None:
        """Readings gone for `cause`; the first of an episode (full, age, memory) says so once."""
        if number <= 0:
            return
        self._counts[FULL if cause == MEMORY else cause] += number
        if cause in (CORRUPT, REFUSED):
            return
        if cause in self._episodes:
            self._episodes[cause] += number
            return
        self._episodes[cause] = number
        if cause == FULL:
            self.say(logging.WARNING, "spool full (%d bytes): dropping the oldest readings until the broker "
                     "catches up", self.max_bytes)
        elif cause == AGE:
            self.say(logging.WARNING, "readings older than spool.max_age (%g s) are being dropped", self.max_age)

    def aged(self, now: float) -> None:
        self._last_age_drop = now

    def in_episode(self) -> bool:
        """Whether an episode of drops (full, age, memory) is going on: one may be over now."""
        return bool(self._episodes)

    def end_age_episode(self, now: float, calm: bool) -> None:
        """Over when nothing unsent is close to the limit (`calm`) and none went for a minute."""
        if AGE in self._episodes and now - self._last_age_drop >= EPISODE_QUIET and calm:
            self.say(logging.INFO, "no more readings older than spool.max_age: %d dropped for age in that "
                     "episode", self._episodes.pop(AGE))

    def end_memory_episode(self) -> None:
        if MEMORY in self._episodes:
            self.say(logging.INFO, "spool: no more readings dropped for memory: %d in that episode",
                     self._episodes.pop(MEMORY))

    def in_memory_episode(self) -> bool:
        return MEMORY in self._episodes

    def end_full_episode(self, size: int) -> None:
        if FULL in self._episodes and size <= 0.9 * self.max_bytes:
            self.say(logging.INFO, "spool no longer full: %d readings dropped in that episode, %d for space "
                     "since start", self._episodes.pop(FULL), self._counts[FULL])

    def dropped(self, cause: str) -> int:
        return self._counts[cause]

    def say(self, level: int, message: str, *args: Any) -> None:
        self._lines.append((level, message, args))

    def lines(self) -> Sequence[LogLine]:
        """The lines to log, handed over once."""
        if not self._lines:
            return ()
        lines, self._lines = self._lines, []
        return lines
