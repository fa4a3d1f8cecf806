"""The spool's readings in memory: the order they leave in, what is in flight, what is dropped.

One lock, held briefly by every thread that calls in (sensor workers append, the uplink takes,
the network thread acknowledges), never across a wait for the disk. Under it the queue calls
only down: into its own parts (Seqs, Drops, Changes, ReadBack), the store (a leaf lock) and
the committer's alarm (a leaf). The committer (spool.py) calls the queue, never the other way
round: the lock order (commit, queue, store) is the call direction. Memory does not grow with
the backlog: a stored one is read back a few hundred rows at a time (readback.py).
"""
from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from agent.delivery.changes import Changes, Commit, Entry
from agent.delivery.drops import AGE, CORRUPT, FULL, MEMORY, REFUSED, Drops, LogLine
from agent.delivery.readback import ReadBack
from agent.delivery.seqs import Seqs
from agent.delivery.stats import SpoolStats
from agent.delivery.store import ROW_OVERHEAD, Store, encode, is_corrupt
from agent.sampling.reading import Reading, Sample

# The spool's one logger, whichever of its parts has something to say (operators filter by it).
log = logging.getLogger("agent.delivery.spool")

# In memory a reading costs several times its stored size: the bound without a file (~140,000 readings).
MEMORY_MAX_BYTES = 8 * 1024 * 1024
# Before this (2017-07-14) a timestamp comes from a clock NTP has not set yet (the Edison has no
# battery-backed clock by default): its age is unknown, so it is never dropped for age.
_SANE_TS = 1_500_000_000.0


class Queue:
    """Readings in seq order from append to acknowledgement, with the store behind it for a backlog."""

    def __init__(self, seqs: Seqs, drops: Drops, changes: Changes, store: Optional[Store] = None,
                 stored: Tuple[int, int] = (0, 0)) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # depth fell: wait_empty
        self._seqs = seqs
        self._drops = drops
        self._changes = changes
        self._stored = ReadBack(store)  # the backlog in the file; without a store, memory only
        self._failing = False  # the last commit failed
        self._paused = False  # said once: publishing waits for the reservation
        self._closed = False
        # Every pending reading with seq <= _cursor is in _in_flight or _front; the rest is the
        # stream: stored rows (read-ahead, then not loaded yet) followed by the unstored ones.
        self._cursor = 0
        self._in_flight: Dict[int, Entry] = {}
        self._front: Dict[int, Entry] = {}  # released: unsent again, before the stream
        self._depth, self._bytes = stored[0], stored[1]

    # -- the program's side ------------------------------------------------------------------------

    def append(self, sample: Sample, now: float) -> Reading:
        blob = encode(sample)
        with self._lock:
            if self._closed:
                raise RuntimeError("the spool is closed")
            reading = Reading.numbered(self._seqs.take(), sample)
            durable = self._stored.durable()
            entry = Entry(reading, blob if durable else None, len(blob) + ROW_OVERHEAD, time.monotonic())
            self._depth += 1
            self._bytes += entry.size
            self._changes.add(entry, self._seqs.low() if durable else None)
            self._enforce(now)
            lines = self._drops.lines()
        if lines:
            _log(lines)
        return reading

    def take(self, count: int, now: float) -> List[Reading]:
        taken: List[Reading] = []
        with self._lock:
            self._enforce(now)
            while len(taken) < count:
                if self._front:
                    entry = self._front.pop(min(self._front))
                else:
                    head = self._stream_head()
                    if head is None:
                        break
                    if not self._seqs.covers(head.seq):
                        # Not covered by a durable reservation yet: the next commit extends it.
                        self._schedule()
                        if self._failing and not self._paused:
                            self._paused = True
                            self._drops.say(logging.ERROR, "spool cannot commit: publishing paused at seq %d "
                                            "until it can (a seq must never be used twice)", head.seq)
                        break
                    self._stored.pop(head)
                    self._cursor = head.seq
                    entry = head
                self._in_flight[entry.seq] = entry
                taken.append(entry.reading)
            lines = self._drops.lines()
        _log(lines)
        return taken

    def release(self, readings: Iterable[Reading]) -> None:
        with self._lock:
            for reading in readings:
                entry = self._in_flight.pop(reading.seq, None)
                if entry is not None:
                    self._front[reading.seq] = entry

    def release_in_flight(self) -> int:
        with self._lock:
            count = len(self._in_flight)
            self._front.update(self._in_flight)
            self._in_flight.clear()
            return count

    def leave(self, seqs: Iterable[int], cause: Optional[str]) -> None:
        """Acknowledged (cause None) or refused (REFUSED): gone from the queue, durably at the next commit."""
        with self._lock:
            for seq in seqs:
                depth = self._depth
                entry = self._in_flight.pop(seq, None)
                if entry is None:
                    entry = self._front.pop(seq, None)
                if entry is not None:
                    self._forget(seq, entry.size)
                elif seq > self._cursor:
                    self._ack_unsent(seq)
                if cause is not None:
                    self._drops.count(cause, depth - self._depth)
            if self._stored.durable():
                self._changes.disarm_if_idle(self._seqs.low())
            self._changed.notify_all()
            lines = self._drops.lines()
        _log(lines)

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._depth:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def depth(self) -> int:
        with self._lock:
            return self._depth

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def next_seq(self) -> int:
        with self._lock:
            return self._seqs.peek()

    def counts(self) -> SpoolStats:
        """The spool at a glance; its file's size on disk is the spool's to add (it knows the path)."""
        with self._lock:
            d, c = self._drops, self._changes
            age = None if c.last_commit is None else time.monotonic() - c.last_commit
            return SpoolStats(self._stored.durable(), self._depth, len(self._in_flight), self._bytes, d.max_bytes,
                              d.dropped(FULL), d.dropped(AGE), d.dropped(CORRUPT), c.commits, age, 0,
                              d.dropped(REFUSED))

    def settle(self, now: float) -> None:
        """Apply the bounds now (at open: what is on disk ages too)."""
        with self._lock:
            self._enforce(now)
            lines = self._drops.lines()
        _log(lines)

    def close(self) -> bool:
        """No more appends (the final commit has them all); False if closed already."""
        with self._lock:
            closed, self._closed = self._closed, True
            return not closed

    # -- the committer's side -----------------------------------------------------------------------

    def commit_due(self) -> Optional[float]:
        """When the oldest change not yet committed must be (time.monotonic()); None if none or no file."""
        with self._lock:
            return self._changes.due(self._seqs.low()) if self._stored.durable() else None

    def wake(self) -> Optional[bool]:
        """The committer woke: None when closed, else whether to commit now (if not, the alarm is set again)."""
        with self._lock:
            if self._closed:
                return None
            if not self._stored.durable():
                return False
            return self._changes.rearm(self._seqs.low()) or self._stored.broken()

    def reschedule(self, attempted: bool = False) -> None:
        """After a commit (what came in during it, or a failed one's retry)."""
        with self._lock:
            if attempted:
                self._changes.attempted()
            self._schedule()

    def broken(self) -> bool:
        with self._lock:
            return self._stored.broken()

    def begin_commit(self, final: bool) -> Optional[Commit]:
        """What to write now; None if nothing (or no file)."""
        with self._lock:
            if not self._stored.durable():
                return None
            limit = self._seqs.wanted(final)
            rows, deletes = self._changes.begin()
            if not rows and not deletes and limit is None:
                return None
            return Commit(rows, deletes, limit, final)

    def end_commit(self, commit: Commit, ok: bool, reserved: bool) -> None:
        """`ok`: all of it is on disk. `reserved`: the commit failed, but its seq limit is in the seq file."""
        with self._lock:
            self._changes.end(commit.rows, commit.deletes, ok)
            if commit.limit is not None and not commit.final and (ok or reserved):
                self._seqs.reserve(commit.limit)
            self._failing = not ok
            if ok:
                self._paused = False
            else:
                self._schedule()

    def reservation_floor(self) -> int:
        with self._lock:
            return self._seqs.floor()

    def swap_store(self, store: Optional[Store]) -> Optional[Store]:
        """Read through `store` from now on (None: read nothing stored); returns the one before."""
        with self._lock:
            return self._stored.swap(store)

    def recover(self, store: Optional[Store]) -> Tuple[int, int]:
        """The file went bad and `store` is a new, empty one (None: none could be made): what memory
        holds goes into it; rows only the old file held are lost. Returns (lost, kept)."""
        with self._lock:
            read_ahead = self._stored.restart(store)
            if store is None:
                self._seqs.unreserved()
                self._drops.cap(MEMORY_MAX_BYTES)
            held = list(self._in_flight.values()) + list(self._front.values()) + read_ahead
            for entry in read_ahead:
                self._front[entry.seq] = entry
            self._cursor = max(self._cursor, self._changes.stored_hi)
            kept = {e.seq: e for e in held}
            kept.update((e.seq, e) for e in self._changes.unstored_entries())
            lost = self._depth - len(kept)
            lost_bytes = self._bytes - sum(e.size for e in kept.values())
            self._changes.restart(kept, durable=store is not None)
            self._depth -= lost
            self._bytes -= lost_bytes
            self._drops.count(CORRUPT, lost)
            self._schedule()
            return lost, len(kept)

    # -- under _lock -----------------------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._stored.durable():
            self._changes.schedule(self._seqs.low())

    def _forget(self, seq: int, size: int) -> None:
        self._depth -= 1
        self._bytes -= size
        if self._changes.forget(seq):
            self._schedule()

    def _ack_unsent(self, seq: int) -> None:
        """An ack for a reading never handed out (seq > cursor): unusual, but it leaves the spool all the same."""
        entry = self._stored.remove(seq) or self._changes.unstored(seq)
        if entry is not None:
            self._forget(seq, entry.size)
            return
        if (self._stored.durable() and self._stored.behind(self._cursor, seq)
                and seq <= self._changes.stored_hi and not self._changes.leaving(seq)):
            try:
                size = self._stored.size_of(seq)
            except sqlite3.Error as exc:
                self._read_failed(exc)
                return
            if size is not None:
                self._forget(seq, size)

    def _stream_head(self) -> Optional[Entry]:
        """The oldest unsent reading after the cursor, loading stored ones as needed; None if none (or unreadable)."""
        stored_hi = self._changes.stored_hi
        if self._stored.pending(self._cursor, stored_hi):  # else (the common case) no call for each step
            head = self._stored.head()
            if head is not None:
                return head
            while self._stored.behind(self._cursor, stored_hi):
                if not self._stored.readable():
                    return None
                try:
                    bad = self._stored.load(self._cursor, stored_hi, self._changes.leaving)
                except sqlite3.Error as exc:
                    self._read_failed(exc)
                    return None
                for seq, length, why in bad:
                    self._drop_corrupt_row(seq, length, why)
                head = self._stored.head()
                if head is not None:
                    return head
        # Readings appended in this run: the jump to the first (the clock's floor, a reservation) is
        # not walked; those before the first pending one (acked or dropped unsent) the cursor passes.
        start, stop = self._seqs.new_after(max(self._cursor, stored_hi))
        entry = self._changes.first_unstored(start, stop)
        passed = stop if entry is None else entry.seq
        if passed > start:
            self._cursor = passed - 1
        return entry

    def _read_failed(self, exc: sqlite3.Error) -> None:
        if self._stored.failed(exc):
            self._changes.ring()  # the committer moves the file aside
        elif not self._failing and not is_corrupt(exc):
            self._drops.say(logging.WARNING, "spool read failed (%s): retrying", exc)

    def _drop_corrupt_row(self, seq: int, length: int, exc: Exception) -> None:
        self._depth -= 1
        self._bytes -= length + ROW_OVERHEAD
        self._drops.count(CORRUPT)
        self._changes.delete(seq)
        self._schedule()
        self._drops.say(logging.ERROR, "spool: reading %d is unreadable (%s): dropped", seq, exc)

    def _oldest_unsent(self) -> Optional[Entry]:
        if self._front:
            return self._front[min(self._front)]
        return self._stream_head()

    def _drop(self, entry: Entry, cause: str) -> None:
        if self._front.pop(entry.seq, None) is None:
            self._stored.pop(entry)
            self._cursor = entry.seq
        self._forget(entry.seq, entry.size)
        self._changed.notify_all()
        self._drops.count(cause)

    def _enforce(self, now: float) -> None:
        """Drop what is too old, then the oldest while over max_bytes; close episodes that are over."""
        drops = self._drops
        if not math.isinf(drops.max_age):
            cutoff = now - drops.max_age
            while True:
                head = self._oldest_unsent()
                if head is None or not _SANE_TS <= head.reading.ts < cutoff:
                    break
                self._drop(head, AGE)
                drops.aged(now)
            if drops.in_episode():  # the common case has none: no call for each kind
                drops.end_age_episode(now, head is None or head.reading.ts >= cutoff + 0.1 * drops.max_age)
        while self._bytes > drops.max_bytes:
            oldest = self._oldest_unsent()
            if oldest is None:
                break  # all in flight: they are the broker's in a moment
            self._drop(oldest, FULL)
        if self._failing and self._stored.durable() and self._changes.unstored_bytes() > MEMORY_MAX_BYTES:
            self._shed()
        if drops.in_episode():
            if not self._failing or self._changes.unstored_bytes() <= 0.9 * MEMORY_MAX_BYTES:
                drops.end_memory_episode()
            drops.end_full_episode(self._bytes)

    def _shed(self) -> None:
        """Commits fail and the readings only memory holds reached MEMORY_MAX_BYTES: the oldest of
        them not in flight go (counted as dropped for space), so a disk that stays broken cannot
        eat the board's memory. Readings already in the file stay; seqs left out are skipped."""
        excess = self._changes.unstored_bytes() - MEMORY_MAX_BYTES
        victims: List[Entry] = []
        for entry in self._changes.unstored_entries():  # oldest first; the few in flight come first
            if excess <= 0:
                break
            if entry.seq not in self._in_flight:
                victims.append(entry)
                excess -= entry.size
        for entry in victims:
            self._front.pop(entry.seq, None)
            self._forget(entry.seq, entry.size)
            if not self._drops.in_memory_episode():
                self._drops.say(logging.WARNING, "spool cannot write its file and holds %d bytes of readings "
                                "in memory: dropping the oldest of them until it can", MEMORY_MAX_BYTES)
            self._drops.count(MEMORY)
        self._changed.notify_all()


def _log(lines: Sequence[LogLine]) -> None:
    """Said under the queue's lock, logged after it: a slow log handler must not hold up the other threads."""
    for level, message, args in lines:
        log.log(level, message, *args)
