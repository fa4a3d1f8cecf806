"""What the spool's file does not have yet, and by when it must: the commit schedule.

Each change (append, ack, drop) is committed at most `commit_interval` after it happened, and
attempts are at least `commit_interval` apart. A reading acknowledged before its deadline is
never written. The committer sleeps on a `Waker` (agent/waker.py) that an append
arms and an ack that leaves nothing to write disarms, neither waking it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Set, Tuple

from agent.sampling.reading import Reading
from agent.waker import Waker

Row = Tuple[int, bytes]


@dataclass(frozen=True)
class Commit:
    rows: List[Row]
    deletes: List[int]
    limit: Optional[int]
    final: bool


class Entry:
    __slots__ = ("seq", "reading", "blob", "size", "born")

    def __init__(self, reading: Reading, blob: Optional[bytes], size: int, born: float = 0.0) -> None:
        self.seq = reading.seq
        self.reading = reading
        self.blob = blob  # None: held in memory only (no file)
        self.size = size
        self.born = born  # time.monotonic() of the append: its commit is due commit_interval later


class Changes:
    """Appended readings not yet committed, stored rows no longer pending, and the committer's alarm.

    Not thread-safe by itself: its owner (the queue) calls it under its own lock only. The
    alarm is a leaf: setting it never calls back."""

    def __init__(self, interval: float, alarm: Optional[Waker], stored_hi: int = 0) -> None:
        self.interval = interval
        self._alarm = alarm
        self._armed: Optional[float] = None  # the deadline the alarm is set to (None: not set)
        self._last_attempt = -math.inf
        self._unstored: Dict[int, Entry] = {}  # appended, not yet committed (without a file: all)
        self._unstored_bytes = 0  # their size: bounded by memory while commits fail
        self._to_delete: Set[int] = set()  # stored (or being stored), no longer pending
        self._deleting: Set[int] = set()  # in the delete of the commit under way
        self._delete_since = 0.0  # when _to_delete became non-empty
        self.stored_hi = stored_hi  # highest seq written by a finished commit (read by the queue)
        self._committing_hi = 0  # highest seq in the commit under way (0: none)
        self.commits = 0
        self.last_commit: Optional[float] = None

    # -- appends and what leaves ------------------------------------------------------------------

    def add(self, entry: Entry, reserve_low: Optional[bool]) -> None:
        """An appended reading, to commit by its deadline; `reserve_low` None: no file, no commit."""
        self._unstored[entry.seq] = entry
        self._unstored_bytes += entry.size
        # With the alarm set, an append cannot make a commit due sooner (the oldest change is
        # older), unless the seq reservation runs low: the common append skips the schedule.
        if reserve_low is not None and (self._armed is None or reserve_low):
            self.schedule(reserve_low)

    def unstored(self, seq: int) -> Optional[Entry]:
        return self._unstored.get(seq)

    def first_unstored(self, start: int, end: int) -> Optional[Entry]:
        """The pending reading with the lowest seq in [start, end), of those not committed yet."""
        unstored = self._unstored
        for seq in range(start, end):
            entry = unstored.get(seq)
            if entry is not None:
                return entry
        return None

    def unstored_entries(self) -> Iterator[Entry]:
        """Oldest first."""
        return iter(list(self._unstored.values()))

    def unstored_bytes(self) -> int:
        return self._unstored_bytes

    def forget(self, seq: int) -> bool:
        """`seq` is no longer pending: not written if it was not yet, deleted if it was (or is being);
        True if that is a delete to commit."""
        popped = self._unstored.pop(seq, None)
        if popped is not None:
            self._unstored_bytes -= popped.size
        if seq <= self.stored_hi or seq <= self._committing_hi:
            self.delete(seq)
            return True
        return False

    def delete(self, seq: int) -> None:
        if not self._to_delete:
            self._delete_since = time.monotonic()
        self._to_delete.add(seq)

    def leaving(self, seq: int) -> bool:
        """Whether a stored row is on its way out (a row read back with it is not pending)."""
        return seq in self._to_delete or seq in self._deleting

    # -- the schedule -------------------------------------------------------------------------------

    def due(self, reserve_low: bool) -> Optional[float]:
        """When the oldest change not yet committed must be; None if there is none."""
        born: List[float] = []
        for entry in self._unstored.values():  # oldest first
            if entry.blob is not None:
                born.append(entry.born)
                break
        if self._to_delete:
            born.append(self._delete_since)
        if reserve_low:
            born.append(-math.inf)  # the seq reservation: with the next possible commit
        if not born:
            return None
        return max(min(born), self._last_attempt) + self.interval

    def schedule(self, reserve_low: bool) -> None:
        """After a change: the alarm goes off by the time a commit is due.

        Only ever moved earlier here, so an append while a commit is already scheduled costs
        nothing; `rearm` sets it later again when the committer finds nothing due yet."""
        if self._alarm is None:
            return
        due = self.due(reserve_low)
        if due is not None and (self._armed is None or due < self._armed):
            self._armed = due
            self._alarm.set(due)

    def disarm_if_idle(self, reserve_low: bool) -> None:
        """All of it acknowledged before its commit: the committer need not wake for it."""
        if self._armed is not None and self._alarm is not None and self.due(reserve_low) is None:
            self._armed = None
            self._alarm.set(None)

    def rearm(self, reserve_low: bool) -> bool:
        """The committer woke: whether a commit is due now (if not, the alarm is set again)."""
        self._armed = None
        due = self.due(reserve_low)
        if due is not None and due <= time.monotonic():
            return True
        self.schedule(reserve_low)
        return False

    def attempted(self) -> None:
        self._last_attempt = time.monotonic()

    def ring(self) -> None:
        if self._alarm is not None:
            self._alarm.ring()

    # -- a commit -------------------------------------------------------------------------------------

    def begin(self) -> Tuple[List[Row], List[int]]:
        """The rows and deletes of the commit starting now (they are 'under way' until `end`)."""
        rows = [(seq, entry.blob) for seq, entry in self._unstored.items() if entry.blob is not None]
        deletes = sorted(self._to_delete)
        self._deleting, self._to_delete = self._to_delete, set()
        self._last_attempt = time.monotonic()
        if rows:
            self._committing_hi = max(seq for seq, _ in rows)
        return rows, deletes

    def end(self, rows: List[Row], deletes: List[int], ok: bool) -> None:
        self._committing_hi = 0
        self._deleting = set()
        if ok:
            for seq, _ in rows:
                popped = self._unstored.pop(seq, None)
                if popped is not None:
                    self._unstored_bytes -= popped.size
            if rows:
                self.stored_hi = max(self.stored_hi, max(seq for seq, _ in rows))
            self.commits += 1
            self.last_commit = time.monotonic()
        else:
            if deletes and not self._to_delete:
                self._delete_since = time.monotonic()
            self._to_delete.update(deletes)

    def restart(self, kept: Dict[int, Entry], durable: bool) -> None:
        """A new, empty file: everything kept is unwritten again, nothing is stored."""
        self._unstored = dict(sorted(kept.items()))
        self._unstored_bytes = sum(e.size for e in self._unstored.values())
        if not durable:
            for entry in self._unstored.values():
                entry.blob = None
        self.stored_hi = 0
        self._to_delete = set()
