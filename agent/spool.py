"""Readings between sampling and the broker's acknowledgement, in seq order.

Held in memory for now: bounded, oldest dropped first and counted. The durable,
crash-safe spool replaces the storage behind this same interface.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Deque, Dict, Iterable, List

from agent.reading import Reading, Sample

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, max_readings: int = 100_000) -> None:
        self._max = max_readings
        self._lock = threading.Condition()
        self._pending: Dict[int, Reading] = {}
        # Not yet handed to the session, oldest first.
        self._unsent: Deque[int] = collections.deque()
        self._next_seq = 1
        self.dropped = 0
        self._dropping = False

    def append(self, sample: Sample) -> Reading:
        with self._lock:
            reading = Reading.numbered(self._next_seq, sample)
            self._next_seq += 1
            self._pending[reading.seq] = reading
            self._unsent.append(reading.seq)
            if len(self._pending) > self._max:
                self._drop_oldest()
            elif self._dropping:
                self._dropping = False
            return reading

    def _drop_oldest(self) -> None:
        # Dicts keep insertion order and seqs are inserted rising: the first key is the oldest.
        oldest = next(iter(self._pending))
        del self._pending[oldest]
        if self._unsent and self._unsent[0] == oldest:
            self._unsent.popleft()
        self.dropped += 1
        if not self._dropping:
            # Once per episode: a full spool at 10 readings/s must not write 10 log lines/s.
            self._dropping = True
            log.warning("spool full (%d readings): dropping the oldest until the broker catches up",
                        self._max)

    def take(self, count: int) -> List[Reading]:
        """The next `count` readings never handed out, in seq order."""
        with self._lock:
            taken: List[Reading] = []
            while self._unsent and len(taken) < count:
                seq = self._unsent.popleft()
                if seq in self._pending:
                    taken.append(self._pending[seq])
            return taken

    def release(self, readings: Iterable[Reading]) -> None:
        """Readings the session could not take go back to the front, in order."""
        with self._lock:
            for reading in sorted(readings, key=lambda r: r.seq, reverse=True):
                if reading.seq in self._pending:
                    self._unsent.appendleft(reading.seq)

    def ack(self, seqs: Iterable[int]) -> None:
        with self._lock:
            for seq in seqs:
                self._pending.pop(seq, None)
            self._lock.notify_all()

    @property
    def depth(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending) - len(self._unsent)

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True
