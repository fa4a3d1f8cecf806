"""Readings between sampling and the broker's acknowledgement: durable, bounded, in seq order.

The spool is the source of truth for delivery. A reading enters it (and gets its `seq`)
before it is published and leaves it only on the broker's PUBACK (`ack`).

Storage: one SQLite file (stdlib `sqlite3`) in WAL mode, `synchronous=FULL`, chosen by
measurement over append-only segment files (bench/spool_bench.py). Appends and acks only
touch memory; a committer thread writes them in one transaction (one fsync of the WAL).
Each change (append, ack, drop) is committed at most `commit_interval` after it happened,
commits are at least `commit_interval` apart, and a reading acknowledged before its
deadline is never written at all: with the broker reachable, almost nothing reaches the
flash. The committer sleeps until a commit is due: appends arm its alarm and an ack that
leaves nothing to write disarms it, neither waking it (agent.delivery.deadline_timer), so a reading
acknowledged in time costs the committer no wake-up at all.

Memory does not grow with the backlog: the spool holds in memory only what was appended
since the last commit, what is in flight, and a small read-ahead of the stored backlog.

Guarantees:
- After kill -9 or a power cut at any instant the file opens cleanly; what is lost is at
  most the changes of the last `commit_interval`: readings appended then are gone, acks
  received then come back as duplicates. A file that is corrupt anyway is moved aside
  (`<name>.corrupt-<UTC time>`, the newest 3 kept) with one log line, and a new one started.
- `seq` only grows, also across crashes: `take()` never hands out a seq that is not
  covered by a durable reservation (kept in the file and in `<name>.seq`, which is also the
  lock that keeps a second process out). After a crash the numbering continues after the
  reservation, so it may jump forward (by at most `seq_block`); a clean `close()` leaves no
  gap. A jump is not a loss: no reading ever had those numbers. If commits keep failing,
  publishing pauses when the reservation runs out rather than use a seq twice.
- Bounded by `max_bytes` (the stored size of the readings, `len(record) + ROW_OVERHEAD`;
  the file is about that plus the WAL, at most max_bytes/4 and 4 MiB) and `max_age` (by the
  sampling time). The oldest readings not in flight are dropped first; each drop is counted
  by cause and logged once per episode. Readings in flight (handed to the session, awaiting
  PUBACK) are never dropped.
"""

from __future__ import annotations

import collections
import logging
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Set, Tuple

from agent.delivery.deadline_timer import DeadlineTimer
from agent.delivery.store import (
    PAGE,
    ROW_OVERHEAD,
    Corrupt,
    SeqFile,
    SpoolBusy,
    Store,
    decode,
    encode,
    is_corrupt,
    move_aside,
    relocate,
)
from agent.sampling.reading import Reading, Sample

log = logging.getLogger(__name__)

__all__ = ["AGE", "CORRUPT", "FULL", "REFUSED", "Spool", "SpoolBusy", "SpoolStats"]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# In memory a reading costs several times its stored size: the bound without a file (~140,000 readings).
MEMORY_MAX_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_AGE = 7 * 24 * 3600.0
# Seqs reserved durably ahead of use; the reservation is extended when half of it is used.
DEFAULT_SEQ_BLOCK = 10_000
# The floor of seq at every start: the wall clock in units of 10 us (1.7e14 in 2025, 2**53 in the
# year 4800: exact in a JSON double). seq may jump up to it, never back, even with every state
# file gone; it stays ahead of every seq already used as long as the agent has averaged under
# 100,000 readings a second since it last started (200/s is a busy board). docs/delivery.md.
SEQ_PER_SECOND = 100_000

FULL = "full"
AGE = "age"
CORRUPT = "corrupt"
REFUSED = "refused"

_READAHEAD = 256
_MEMORY = "memory"  # an episode of drops for memory while commits fail (counted as FULL)
# Before this (2017-07-14) a timestamp comes from a clock NTP has not set yet (the Edison has no
# battery-backed clock by default): its age is unknown, so it is never dropped for age.
_SANE_TS = 1_500_000_000.0
_EPISODE_QUIET = 60.0
# Above every seq (they stay below 2**53, see clock_floor). Not sys.maxsize: that is 2**31 - 1 on the
# 32-bit board, below today's clock floor, so an in-memory spool handed nothing out there.
_NO_LIMIT = 2 ** 63 - 1


@dataclass(frozen=True)
class SpoolStats:
    """The spool at a glance, for the agent's status."""

    durable: bool
    depth: int
    in_flight: int
    bytes: int
    max_bytes: int
    dropped_full: int
    dropped_age: int
    dropped_corrupt: int
    commits: int
    # Seconds since the last durable commit; None before the first (or when not durable).
    last_commit_age: Optional[float]
    # The spool file and its WAL on disk.
    file_bytes: int
    # Readings in messages the broker refused (agent.mqtt.refusals): never sent again.
    dropped_refused: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_age + self.dropped_corrupt + self.dropped_refused

    def describe(self) -> str:
        committed = ("last commit %.1f s ago" % self.last_commit_age if self.last_commit_age is not None
                     else "no commit yet" if self.durable else "in memory only")
        return ("spool: %d readings (%d in flight), %d of %d bytes, dropped %d (full %d, age %d, corrupt %d, "
                "refused %d), %s" % (self.depth, self.in_flight, self.bytes, self.max_bytes, self.dropped,
                                     self.dropped_full, self.dropped_age, self.dropped_corrupt, self.dropped_refused,
                                     committed))


def clock_floor(now: float) -> int:
    """The lowest seq a start at wall-clock time `now` may use (at least 1; a clock at 1970 gives
    next to nothing, so the floor from the state files decides then)."""
    if not math.isfinite(now) or now <= 0:
        return 1
    return max(1, int(now * SEQ_PER_SECOND))


class _Entry:
    __slots__ = ("seq", "reading", "blob", "size", "born")

    def __init__(self, reading: Reading, blob: Optional[bytes], size: int, born: float = 0.0) -> None:
        self.seq = reading.seq
        self.reading = reading
        self.blob = blob
        self.size = size
        self.born = born  # time.monotonic() of the append: its commit is due commit_interval later


class Spool:
    """A durable, bounded queue of readings between sampling and PUBACK.

    `path=None` keeps the readings in memory only (lost on restart): for tests of other
    modules, and the fallback when the file cannot be used at all. Then the bound is at most
    MEMORY_MAX_BYTES, whatever max_bytes says.

    Threads: `append` from the sensor workers, `take`/`release` from the uplink, `ack` from
    the MQTT network thread; all of them hold one short lock and never wait for the disk.
    A committer thread does the writing, outside that lock.
    """

    def __init__(self, path: Optional[Path] = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_age: float = DEFAULT_MAX_AGE, commit_interval: float = 1.0,
                 clock: Callable[[], float] = time.time, *, seq_block: int = DEFAULT_SEQ_BLOCK) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if not max_age > 0:
            raise ValueError("max_age must be positive")
        if commit_interval < 0:
            raise ValueError("commit_interval must not be negative")
        if seq_block < 2:
            raise ValueError("seq_block must be at least 2")
        self.path = Path(path) if path is not None else None
        self.max_bytes = max_bytes if path is not None else min(max_bytes, MEMORY_MAX_BYTES)
        self.max_age = max_age
        self.commit_interval = commit_interval
        self._clock = clock
        self._seq_block = seq_block
        self._wal_pages = max(16, min(1024, max_bytes // 4 // PAGE))

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # depth fell: wait_empty
        self._commit_lock = threading.Lock()  # one commit at a time; taken before _lock, never inside it

        self._next_seq = clock_floor(clock())
        self._first_new = self._next_seq  # the first seq of this run (set again once the file is read)
        self._safe_seq = _NO_LIMIT  # seqs below it may be handed out (durably reserved)
        # Every pending reading with seq <= _cursor is in _in_flight or _front; the rest is the
        # stream: stored rows (read-ahead, then not loaded yet) followed by _unstored.
        self._cursor = 0
        self._in_flight: Dict[int, _Entry] = {}
        self._front: Dict[int, _Entry] = {}  # released: unsent again, before the stream
        self._ra: Deque[_Entry] = collections.deque()
        self._ra_hi = 0  # stored rows up to here were loaded (or skipped)
        self._stored_hi = 0  # highest seq written by a finished commit
        self._committing_hi = 0  # highest seq in the commit under way (0: none)
        self._unstored: Dict[int, _Entry] = {}  # appended, not yet committed (in memory mode: all)
        self._unstored_bytes = 0  # their size: bounded by MEMORY_MAX_BYTES while commits fail
        self._to_delete: Set[int] = set()  # stored (or being stored), no longer pending
        self._deleting: Set[int] = set()  # in the delete of the commit under way
        self._depth = 0
        self._bytes = 0
        self._dropped = {FULL: 0, AGE: 0, CORRUPT: 0, REFUSED: 0}
        self._episode: Dict[str, int] = {}
        self._last_age_drop = 0.0
        self._logs: List[Tuple[int, str, Tuple[Any, ...]]] = []
        self._alarm: Optional[DeadlineTimer] = None  # the committer's; set while a store is open
        self._armed: Optional[float] = None  # the deadline the alarm is set to (None: not set)
        self._delete_since = 0.0  # when _to_delete became non-empty
        self._last_attempt = -math.inf
        self._broken = False  # the reader met corruption: the committer moves the file aside
        self._closing = False
        self._closed = False
        self._commits = 0
        self._last_commit: Optional[float] = None
        self._failing = 0
        self._paused = False
        self._lost_file: Optional[str] = None  # said once: why the file at path is not ours (see _check_files)
        self._wakeups = 0

        self._seqfile: Optional[SeqFile] = None
        self._store: Optional[Store] = None
        self._thread: Optional[threading.Thread] = None
        if self.path is not None:
            self._open(self.path)

    # -- the interface the program uses -------------------------------------------------------

    def append(self, sample: Sample) -> Reading:
        """Number the sample and keep it; never waits for the disk."""
        blob = encode(sample)
        now = self._clock()
        with self._lock:
            if self._closed:
                raise RuntimeError("the spool is closed")
            seq = self._next_seq
            self._next_seq = seq + 1
            reading = Reading.numbered(seq, sample)
            entry = _Entry(reading, blob if self._store is not None else None, len(blob) + ROW_OVERHEAD,
                           time.monotonic())
            self._unstored[seq] = entry
            self._unstored_bytes += entry.size
            self._depth += 1
            self._bytes += entry.size
            self._schedule()
            self._enforce(now)
        if self._logs:
            self._emit()
        return reading

    def take(self, count: int) -> List[Reading]:
        """The next `count` readings never handed out (or released), in seq order."""
        now = self._clock()
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
                    if head.seq >= self._safe_seq:
                        # Not covered by a durable reservation yet: the next commit extends it.
                        self._schedule()
                        if self._failing and not self._paused:
                            self._paused = True
                            self._logs.append((logging.ERROR, "spool cannot commit: publishing paused at seq %d "
                                               "until it can (a seq must never be used twice)", (head.seq,)))
                        break
                    if self._ra and self._ra[0] is head:
                        self._ra.popleft()
                    self._cursor = head.seq
                    entry = head
                self._in_flight[entry.seq] = entry
                taken.append(entry.reading)
        if self._logs:
            self._emit()
        return taken

    def release(self, readings: Iterable[Reading]) -> None:
        """Readings the session could not take go back to the front, in seq order."""
        with self._lock:
            for reading in readings:
                entry = self._in_flight.pop(reading.seq, None)
                if entry is not None:
                    self._front[reading.seq] = entry

    def commit_overdue(self) -> float:
        """Seconds the writer is late with a due commit: grows only if the committer is stuck
        (a failing disk is retried every interval, which moves the deadline: that is progress)."""
        with self._lock:
            due = self._due() if self._store is not None else None
        return max(0.0, time.monotonic() - due) if due is not None else 0.0

    def release_in_flight(self) -> int:
        """Everything handed out goes back to the front: for a new session, which will send it again."""
        with self._lock:
            count = len(self._in_flight)
            self._front.update(self._in_flight)
            self._in_flight.clear()
            return count

    def ack(self, seqs: Iterable[int]) -> None:
        """The broker has these: they leave the spool (durably at the next commit)."""
        self._leave(seqs, None)

    def reject(self, seqs: Iterable[int]) -> None:
        """The broker refused the message that carried these: they leave the spool as an ack would,
        but are counted as dropped (refused), not delivered."""
        self._leave(seqs, REFUSED)

    def _leave(self, seqs: Iterable[int], cause: Optional[str]) -> None:
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
                    self._dropped[cause] += depth - self._depth
            if self._armed is not None and self._alarm is not None and self._due() is None:
                # All of it acknowledged before its commit: the committer need not wake for it.
                self._armed = None
                self._alarm.set(None)
            self._changed.notify_all()
        if self._logs:
            self._emit()

    @property
    def depth(self) -> int:
        with self._lock:
            return self._depth

    @property
    def next_seq(self) -> int:
        """The seq the next append gets; read right after opening, where this run's seqs start."""
        with self._lock:
            return self._next_seq

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    @property
    def dropped(self) -> int:
        with self._lock:
            return sum(self._dropped.values())

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._depth:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    # -- durability ---------------------------------------------------------------------------

    def commit(self) -> bool:
        """Make every append and ack so far durable now; False if there was nothing to write.

        The committer does this by itself at most once per commit_interval; call it directly
        only where waiting for the disk is the point (tests, tools).
        """
        with self._commit_lock:
            return self._commit()

    def close(self) -> None:
        """Stop the committer and commit what is left, with the exact next seq (no gap at the next start)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._closed = True  # no more appends: the final commit has them all
            if self._alarm is not None:
                self._alarm.ring()
        if self._thread is not None:
            self._thread.join()
        if self._alarm is not None:
            self._alarm.close()
        with self._commit_lock:
            if self._store is not None:
                self._commit(final=True)
            with self._lock:
                if self._store is not None:
                    self._store.close()  # the last connection checkpoints and removes the WAL
                    self._store = None
            if self._seqfile is not None:
                self._seqfile.close()
                self._seqfile = None

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> SpoolStats:
        store = self._store
        file_bytes = store.file_bytes() if store is not None else 0
        with self._lock:
            return SpoolStats(
                durable=self._store is not None, depth=self._depth, in_flight=len(self._in_flight),
                bytes=self._bytes, max_bytes=self.max_bytes, dropped_full=self._dropped[FULL],
                dropped_age=self._dropped[AGE], dropped_corrupt=self._dropped[CORRUPT],
                dropped_refused=self._dropped[REFUSED], commits=self._commits,
                last_commit_age=(time.monotonic() - self._last_commit if self._last_commit is not None else None),
                file_bytes=file_bytes)

    # -- opening --------------------------------------------------------------------------------

    def _open(self, path: Path) -> None:
        try:
            # 0700 whatever the umask when the agent makes it (systemd's StateDirectory= does the same).
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._seqfile = SeqFile(path.with_name(path.name + ".seq"))
        except OSError as exc:
            log.error("cannot use the spool at %s (%s): readings are kept in memory only and lost on restart",
                      path, exc.strerror or exc)
            self.max_bytes = min(self.max_bytes, MEMORY_MAX_BYTES)
            return
        floor = self._seqfile.read()
        try:
            try:
                store = Store(path, self._wal_pages)
                try:
                    count, size, hi, limit = store.check()
                except BaseException:
                    store.close()
                    raise
            except (sqlite3.DatabaseError, Corrupt) as exc:
                if not is_corrupt(exc):
                    raise
                floor = max(floor, self._salvage(path))
                target = move_aside(path, self._clock())
                log.error("spool file %s is corrupt (%s): moved aside to %s, starting a new one at seq %d",
                          path, exc, target.name, max(floor, self._next_seq))
                store = Store(path, self._wal_pages)
                count, size, hi, limit = store.check()
        except (sqlite3.Error, OSError, Corrupt) as exc:
            log.error("cannot use the spool at %s (%s): readings are kept in memory only and lost on restart",
                      path, exc)
            self._next_seq = self._first_new = max(floor, self._next_seq)
            self.max_bytes = min(self.max_bytes, MEMORY_MAX_BYTES)
            self._seqfile.close()
            self._seqfile = None
            return
        self._store = store
        self._next_seq = self._first_new = max(self._next_seq, floor, limit, hi + 1)
        self._safe_seq = self._next_seq  # nothing may be handed out before the first reservation
        self._depth = count
        self._bytes = size + count * ROW_OVERHEAD
        self._stored_hi = hi
        if count:
            log.info("spool %s: %d readings not yet acknowledged are sent again first (seq %d on)",
                     path, count, self._next_seq)
        with self._lock:
            self._enforce(self._clock())
        if self._logs:
            self._emit()
        with self._commit_lock:
            self._commit()
        self._alarm = DeadlineTimer()
        self._thread = threading.Thread(target=self._run, name="spool-commit", daemon=True)
        self._thread.start()

    def _salvage(self, path: Path) -> int:
        try:
            conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=1.0)
        except sqlite3.Error:
            return 0
        best = 0
        for query in ("SELECT value FROM meta WHERE key = 'seq_limit'", "SELECT max(seq) + 1 FROM readings"):
            try:
                row = conn.execute(query).fetchone()
                if row and row[0] is not None:
                    best = max(best, int(row[0]))
            except (sqlite3.Error, ValueError, TypeError):
                pass
        conn.close()
        return best

    # -- committing -----------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Under _lock, after a change: the committer's alarm goes off by the time a commit is due.

        Only ever moved earlier here, so an append while a commit is already scheduled costs
        nothing; the committer itself sets it later again when it finds nothing due yet.
        """
        if self._alarm is None or self._store is None:
            return
        due = self._due()
        if due is not None and (self._armed is None or due < self._armed):
            self._armed = due
            self._alarm.set(due)

    def _due(self) -> Optional[float]:
        """Under _lock: when the oldest change not yet committed must be; None if there is none.

        Each change (append, ack, drop) is committed at most commit_interval after it happened,
        and attempts are at least commit_interval apart. A reading acknowledged before its
        deadline is never written.
        """
        born: List[float] = []
        for entry in self._unstored.values():  # oldest first
            if entry.blob is not None:
                born.append(entry.born)
                break
        if self._to_delete:
            born.append(self._delete_since)
        if self._safe_seq - self._next_seq < self._seq_block // 2:
            born.append(-math.inf)  # the seq reservation: with the next possible commit
        if not born:
            return None
        return max(min(born), self._last_attempt) + self.commit_interval

    def _run(self) -> None:
        alarm = self._alarm
        assert alarm is not None
        while True:
            alarm.wait()
            with self._lock:
                self._wakeups += 1
                if self._closing:
                    return  # close() makes the last commit
                # Whatever changes from here on arms the alarm again by itself.
                self._armed = None
                due = self._due()
                if not self._broken and (due is None or due > time.monotonic()):
                    self._schedule()  # early (a ring, or a deadline moved later): not yet
                    continue
            with self._commit_lock:
                try:
                    self._commit()
                except Exception:
                    # A bug must not end durability quietly: say so, try again an interval later.
                    log.exception("spool commit failed unexpectedly; retrying in %.1f s", self.commit_interval)
                    with self._lock:
                        self._last_attempt = time.monotonic()
            with self._lock:
                self._schedule()  # what came in during the commit, or a failed one's retry

    def _commit(self, final: bool = False, recovered: bool = False) -> bool:
        """Under _commit_lock."""
        if self._broken:
            self._recover("unreadable rows")
        self._check_files()
        store = self._store
        if store is None:
            return False
        with self._lock:
            rows = [(seq, entry.blob) for seq, entry in self._unstored.items() if entry.blob is not None]
            deletes = sorted(self._to_delete)
            self._deleting = self._to_delete
            self._to_delete = set()
            self._last_attempt = time.monotonic()
            limit: Optional[int] = None
            if final:
                limit = self._next_seq
            elif self._safe_seq - self._next_seq < self._seq_block // 2:
                limit = self._next_seq + self._seq_block
            if not rows and not deletes and limit is None:
                self._deleting = set()
                return False
            if rows:
                self._committing_hi = max(seq for seq, _ in rows)
        error: Optional[BaseException] = None
        try:
            store.write(rows, deletes, limit)
            if limit is not None and self._seqfile is not None:
                self._seqfile.write(limit)
        except (sqlite3.Error, OSError) as exc:
            error = exc
        reserved = False
        if error is not None and limit is not None and not final and self._seqfile is not None:
            # The database cannot be written, the seq file perhaps can: the reservation it holds is
            # as good (the next start takes the larger of the two), and publishing need not pause.
            try:
                self._seqfile.write(limit)
                reserved = True
            except OSError:
                pass
        with self._lock:
            self._committing_hi = 0
            self._deleting = set()
            if error is None:
                for seq, _ in rows:
                    popped = self._unstored.pop(seq, None)
                    if popped is not None:
                        self._unstored_bytes -= popped.size
                if rows:
                    self._stored_hi = max(self._stored_hi, max(seq for seq, _ in rows))
                if limit is not None and not final:
                    self._safe_seq = limit
                self._commits += 1
                self._last_commit = time.monotonic()
            else:
                if reserved and limit is not None:
                    self._safe_seq = limit
                if deletes and not self._to_delete:
                    self._delete_since = time.monotonic()
                self._to_delete.update(deletes)
                self._schedule()
        if error is None:
            if self._failing:
                log.info("spool commits work again (after %d failed)", self._failing)
                self._failing = 0
                self._paused = False
            return True
        self._failing += 1
        if is_corrupt(error) and not recovered:
            self._recover(str(error))
            return self._commit(final, recovered=True) if self._store is not None else False
        if self._failing == 1:
            log.warning("spool commit failed (%s): readings stay in memory; retrying every %.1f s",
                        error, self.commit_interval)
        return False

    def _check_files(self) -> None:
        """Under _commit_lock: the spool file or the seq file removed (or replaced) while running.

        The open file still works (an unlinked inode keeps its data until it is closed), but
        whatever it holds would be gone at the next start: a new file at the path gets all of
        it; until that works (the directory gone or replaced), the old file is used and the
        attempt repeated at every commit."""
        store, seqfile = self._store, self._seqfile
        why = store.gone() if store is not None else None
        if store is not None and why is not None:
            try:
                new = relocate(store, self._wal_pages, self._clock())
            except (sqlite3.Error, OSError, Corrupt) as exc:
                if self._lost_file != why:
                    self._lost_file = why
                    log.error("spool file %s: %s while running, and a new one cannot be made there (%s): "
                              "still writing to the old one, whose readings are lost if the agent stops "
                              "before it can; retrying at every commit", self.path, why, exc)
                return
            with self._lock:  # take() must not be reading through the connection being closed
                self._store = new
            store.close()
            log.error("spool file %s: %s while running: made a new one with the %d readings not yet "
                      "acknowledged", self.path, why, self._depth)
            self._lost_file = None
        if seqfile is not None and seqfile.gone():
            try:
                fresh = SeqFile(seqfile.path)
                try:
                    fresh.write(max(seqfile.read(), self._safe_seq if self._safe_seq != _NO_LIMIT else 0,
                                    self._next_seq))
                except OSError:
                    fresh.close()
                    raise
            except (OSError, SpoolBusy) as exc:
                if self._lost_file != "seq":
                    self._lost_file = "seq"
                    log.error("spool seq file %s was removed while running and cannot be made again (%s); "
                              "retrying at every commit", seqfile.path, exc)
                return
            seqfile.close()
            self._seqfile = fresh
            log.error("spool seq file %s was removed while running: made again", fresh.path)

    def _recover(self, reason: str) -> None:
        """Under _commit_lock: the file went bad while running. Keep what memory holds, start a new file."""
        assert self.path is not None
        with self._lock:
            # Under the spool lock: take() must not be reading through a connection being closed. Rare.
            self._broken = False
            if self._store is not None:
                self._store.close()
            target = self.path
            try:
                target = move_aside(self.path, self._clock())
                self._store = Store(self.path, self._wal_pages)
            except (sqlite3.Error, OSError, Corrupt) as exc:
                self._store = None
                self._safe_seq = _NO_LIMIT
                self.max_bytes = min(self.max_bytes, MEMORY_MAX_BYTES)
                log.error("spool file %s went bad (%s) and no new one can be made (%s): in memory only from now on",
                          self.path, reason, exc)
            # Rows only the old file held are lost; everything in memory goes into the new file.
            held = list(self._in_flight.values()) + list(self._front.values()) + list(self._ra)
            for entry in self._ra:
                self._front[entry.seq] = entry
            self._ra.clear()
            self._cursor = max(self._cursor, self._stored_hi)
            kept = {e.seq: e for e in held}
            kept.update(self._unstored)
            lost = self._depth - len(kept)
            lost_bytes = self._bytes - sum(e.size for e in kept.values())
            self._unstored = dict(sorted(kept.items()))
            self._unstored_bytes = sum(e.size for e in self._unstored.values())
            if self._store is None:
                for entry in self._unstored.values():
                    entry.blob = None
            self._stored_hi = self._ra_hi = 0
            self._to_delete = set()
            self._depth -= lost
            self._bytes -= lost_bytes
            self._dropped[CORRUPT] += lost
            self._schedule()
            if self._store is not None:
                log.error("spool file %s went bad (%s): moved aside to %s; %d readings only it held are lost, "
                          "%d kept in a new file", self.path, reason, target.name, lost, len(kept))

    # -- the queue, under _lock -------------------------------------------------------------------

    def _forget(self, seq: int, size: int) -> None:
        self._depth -= 1
        self._bytes -= size
        popped = self._unstored.pop(seq, None)
        if popped is not None:
            self._unstored_bytes -= popped.size
        if seq <= self._stored_hi or seq <= self._committing_hi:
            self._delete(seq)

    def _delete(self, seq: int) -> None:
        if not self._to_delete:
            self._delete_since = time.monotonic()
        self._to_delete.add(seq)
        self._schedule()

    def _ack_unsent(self, seq: int) -> None:
        """An ack for a reading never handed out (seq > cursor): unusual, but it leaves the spool all the same."""
        for entry in self._ra:
            if entry.seq == seq:
                self._ra.remove(entry)
                self._forget(seq, entry.size)
                return
        entry_ = self._unstored.get(seq)
        if entry_ is not None:
            self._forget(seq, entry_.size)
            return
        if (self._store is not None and max(self._cursor, self._ra_hi) < seq <= self._stored_hi
                and seq not in self._to_delete and seq not in self._deleting):
            try:
                size = self._store.size_of(seq)
            except sqlite3.Error as exc:
                self._read_failed(exc)
                return
            if size is not None:
                self._forget(seq, size + ROW_OVERHEAD)

    def _stream_head(self) -> Optional[_Entry]:
        """The oldest unsent reading after the cursor, loading stored ones as needed; None if none (or unreadable)."""
        if self._ra:
            return self._ra[0]
        while max(self._cursor, self._ra_hi) < self._stored_hi:
            store = self._store
            if store is None or self._broken:
                return None
            after = max(self._cursor, self._ra_hi)
            try:
                rows = store.load(after, self._stored_hi, _READAHEAD)
            except sqlite3.Error as exc:
                self._read_failed(exc)
                return None
            self._ra_hi = rows[-1][0] if len(rows) == _READAHEAD else self._stored_hi
            for seq, blob in rows:
                if seq in self._to_delete or seq in self._deleting:
                    continue
                try:
                    reading = decode(seq, blob)
                except (ValueError, TypeError) as exc:
                    self._drop_corrupt_row(seq, len(blob), exc)
                    continue
                self._ra.append(_Entry(reading, blob, len(blob) + ROW_OVERHEAD))
            if self._ra:
                return self._ra[0]
        # Readings appended in this run start at _first_new: the jump to it (the clock's floor, a
        # reservation) is not walked one seq at a time.
        seq = max(self._cursor, self._stored_hi, self._first_new - 1) + 1
        while seq < self._next_seq:
            entry = self._unstored.get(seq)
            if entry is not None:
                return entry
            # Not pending (acked or dropped before its commit): nothing to wait for there.
            self._cursor = seq
            seq += 1
        return None

    def _read_failed(self, exc: sqlite3.Error) -> None:
        if is_corrupt(exc):
            if not self._broken:
                self._broken = True
                if self._alarm is not None:
                    self._alarm.ring()
        elif not self._failing:
            self._logs.append((logging.WARNING, "spool read failed (%s): retrying", (exc,)))

    def _drop_corrupt_row(self, seq: int, length: int, exc: Exception) -> None:
        self._depth -= 1
        self._bytes -= length + ROW_OVERHEAD
        self._dropped[CORRUPT] += 1
        self._delete(seq)
        self._logs.append((logging.ERROR, "spool: reading %d is unreadable (%s): dropped", (seq, exc)))

    def _oldest_unsent(self) -> Optional[_Entry]:
        if self._front:
            return self._front[min(self._front)]
        return self._stream_head()

    def _drop(self, entry: _Entry, cause: str) -> None:
        if self._front.pop(entry.seq, None) is None:
            if self._ra and self._ra[0] is entry:
                self._ra.popleft()
            self._cursor = entry.seq
        self._forget(entry.seq, entry.size)
        self._changed.notify_all()
        self._dropped[cause] += 1
        if cause in self._episode:
            self._episode[cause] += 1
        else:
            self._episode[cause] = 1
            if cause == FULL:
                self._logs.append((logging.WARNING, "spool full (%d bytes): dropping the oldest readings until "
                                   "the broker catches up", (self.max_bytes,)))
            else:
                self._logs.append((logging.WARNING, "readings older than spool.max_age (%g s) are being dropped",
                                   (self.max_age,)))

    def _enforce(self, now: float) -> None:
        """Drop what is too old, then the oldest while over max_bytes; close episodes that are over."""
        head: Optional[_Entry] = None
        if not math.isinf(self.max_age):
            cutoff = now - self.max_age
            while True:
                head = self._oldest_unsent()
                if head is None or not _SANE_TS <= head.reading.ts < cutoff:
                    break
                self._drop(head, AGE)
                self._last_age_drop = now
            # Over when nothing unsent is close to the limit and none went for a minute (no flapping).
            if (AGE in self._episode and now - self._last_age_drop >= _EPISODE_QUIET
                    and (head is None or head.reading.ts >= cutoff + 0.1 * self.max_age)):
                self._logs.append((logging.INFO, "no more readings older than spool.max_age: %d dropped for age "
                                   "in that episode", (self._episode.pop(AGE),)))
        while self._bytes > self.max_bytes:
            head = self._oldest_unsent()
            if head is None:
                break  # all in flight: they are the broker's in a moment
            self._drop(head, FULL)
        if self._failing and self._store is not None and self._unstored_bytes > MEMORY_MAX_BYTES:
            self._shed()
        if _MEMORY in self._episode and (not self._failing or self._unstored_bytes <= 0.9 * MEMORY_MAX_BYTES):
            self._logs.append((logging.INFO, "spool: no more readings dropped for memory: %d in that episode",
                               (self._episode.pop(_MEMORY),)))
        if FULL in self._episode and self._bytes <= 0.9 * self.max_bytes:
            self._logs.append((logging.INFO, "spool no longer full: %d readings dropped in that episode, "
                               "%d for space since start", (self._episode.pop(FULL), self._dropped[FULL])))

    def _shed(self) -> None:
        """Commits fail and the readings only memory holds reached MEMORY_MAX_BYTES: the oldest of
        them not in flight go (counted as dropped for space), so a disk that stays broken cannot
        eat the board's memory. Readings already in the file stay; seqs left out are skipped."""
        excess = self._unstored_bytes - MEMORY_MAX_BYTES
        victims: List[_Entry] = []
        for seq, entry in self._unstored.items():  # oldest first; the few in flight come first
            if excess <= 0:
                break
            if seq not in self._in_flight:
                victims.append(entry)
                excess -= entry.size
        for entry in victims:
            self._front.pop(entry.seq, None)
            self._forget(entry.seq, entry.size)
            self._dropped[FULL] += 1
            if _MEMORY in self._episode:
                self._episode[_MEMORY] += 1
            else:
                self._episode[_MEMORY] = 1
                self._logs.append((logging.WARNING, "spool cannot write its file and holds %d bytes of readings "
                                   "in memory: dropping the oldest of them until it can", (MEMORY_MAX_BYTES,)))
        self._changed.notify_all()

    def _emit(self) -> None:
        with self._lock:
            logs, self._logs = self._logs, []
        for level, message, args in logs:
            log.log(level, message, *args)
