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
leaves nothing to write disarms it, neither waking it (agent/waker.py), so a reading
acknowledged in time costs the committer no wake-up at all.

The parts: `Spool` (here) is the outbox and the committer (opens, writes, recovers); the
readings in memory are the `Queue`'s (queue.py), what the file lacks and by when is `Changes`'
(changes.py), the file is the `Store` (store.py). Calls go one way, spool -> queue -> store:
the lock order is the call direction.

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

import dataclasses
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional

from agent.config.schema import SpoolConfig
from agent.delivery.changes import Changes
from agent.delivery.drops import AGE, CORRUPT, FULL, REFUSED, Drops
from agent.delivery.queue import MEMORY_MAX_BYTES, Queue
from agent.delivery.seqs import DEFAULT_SEQ_BLOCK, Seqs, clock_floor
from agent.delivery.stats import SpoolStats, file_bytes
from agent.delivery.store import (
    ROW_OVERHEAD,
    Corrupt,
    SeqFile,
    SpoolBusy,
    Store,
    is_corrupt,
    move_aside,
    relocate,
    salvage,
    wal_pages,
)
from agent.sampling.reading import Reading, Sample
from agent.waker import Waker

log = logging.getLogger(__name__)

__all__ = ["AGE", "CORRUPT", "FULL", "REFUSED", "Spool", "SpoolBusy", "SpoolStats", "clock_floor"]

class Spool:
    """A durable, bounded queue of readings between sampling and PUBACK: the outbox.

    `path=None` keeps the readings in memory only (lost on restart), as does a file that cannot
    be used at all; then the bound is at most MEMORY_MAX_BYTES, whatever max_bytes says. The
    defaults are the config schema's (agent/config/schema.py SpoolConfig).

    Threads: `append` from the sensor workers, `take`/`release` from the uplink, `ack` from
    the MQTT network thread; all of them go to the queue, whose one short lock never waits for
    the disk. The committer thread does the writing, under the commit lock, calling down into
    the queue for what to write; nothing calls back up.
    """

    def __init__(self, path: Optional[Path] = None, max_bytes: int = SpoolConfig.max_bytes,
                 max_age: float = SpoolConfig.max_age, commit_interval: float = SpoolConfig.commit_interval,
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
        self._clock = clock
        self._wal_pages = wal_pages(max_bytes)
        self._interval = commit_interval
        # One commit at a time. Taken only here, before the queue's lock (by calling the queue), never inside it.
        self._commit_lock = threading.Lock()
        self._failures = 0  # commits failed in a row (under _commit_lock)
        self._lost_file: Optional[str] = None  # said once: why the file at path is not ours (see _check_files)
        self._store: Optional[Store] = None
        self._seqfile: Optional[SeqFile] = None
        self._alarm: Optional[Waker] = None  # the committer's; set while a store is open
        self._thread: Optional[threading.Thread] = None
        drops = Drops(max_bytes, max_age)
        first = clock_floor(clock())
        self._queue = Queue(Seqs(first, seq_block, False), drops, Changes(commit_interval, None))
        if self.path is None:
            drops.cap(MEMORY_MAX_BYTES)
        else:
            self._open(self.path, first, drops, commit_interval, seq_block)

    # -- the interface the program uses -------------------------------------------------------

    def append(self, sample: Sample) -> Reading:
        """Number the sample and keep it; never waits for the disk."""
        return self._queue.append(sample, self._clock())

    def take(self, count: int) -> List[Reading]:
        """The next `count` readings never handed out (or released), in seq order."""
        return self._queue.take(count, self._clock())

    def release(self, readings: Iterable[Reading]) -> None:
        """Readings the session could not take go back to the front, in seq order."""
        self._queue.release(readings)

    def release_in_flight(self) -> int:
        """Everything handed out goes back to the front: for a new session, which will send it again."""
        return self._queue.release_in_flight()

    def ack(self, seqs: Iterable[int]) -> None:
        """The broker has these: they leave the spool (durably at the next commit)."""
        self._queue.leave(seqs, None)

    def reject(self, seqs: Iterable[int]) -> None:
        """The broker refused the message that carried these: they leave the spool as an ack would,
        but are counted as dropped (refused), not delivered."""
        self._queue.leave(seqs, REFUSED)

    def commit_overdue(self) -> float:
        """Seconds the writer is late with a due commit: grows only if the committer is stuck
        (a failing disk is retried every interval, which moves the deadline: that is progress)."""
        due = self._queue.commit_due()
        return max(0.0, time.monotonic() - due) if due is not None else 0.0

    @property
    def depth(self) -> int:
        return self._queue.depth()

    @property
    def next_seq(self) -> int:
        """The seq the next append gets; read right after opening, where this run's seqs start."""
        return self._queue.next_seq()

    @property
    def in_flight(self) -> int:
        return self._queue.in_flight()

    @property
    def dropped(self) -> int:
        return self._queue.counts().dropped

    def wait_empty(self, timeout: float) -> bool:
        return self._queue.wait_empty(timeout)

    def stats(self) -> SpoolStats:
        stats = self._queue.counts()
        if stats.durable and self.path is not None:
            return dataclasses.replace(stats, file_bytes=file_bytes(self.path))
        return stats

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
        if not self._queue.close():
            return
        if self._alarm is not None:
            self._alarm.ring()
        if self._thread is not None:
            self._thread.join()
        with self._commit_lock:
            if self._store is not None:
                self._commit(final=True)
                self._queue.swap_store(None)
                self._store.close()  # the last connection checkpoints and removes the WAL
                self._store = None
            if self._seqfile is not None:
                self._seqfile.close()
                self._seqfile = None
        if self._alarm is not None:
            self._alarm.close()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening --------------------------------------------------------------------------------

    def _open(self, path: Path, first: int, drops: Drops, interval: float, seq_block: int) -> None:
        try:
            # 0700 whatever the umask when the agent makes it (systemd's StateDirectory= does the same).
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            seqfile = SeqFile(path.with_name(path.name + ".seq"))
        except OSError as exc:
            log.error("cannot use the spool at %s (%s): readings are kept in memory only and lost on restart",
                      path, exc.strerror or exc)
            drops.cap(MEMORY_MAX_BYTES)
            return
        floor = seqfile.read()
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
                floor = max(floor, salvage(path))
                target = move_aside(path, self._clock())
                log.error("spool file %s is corrupt (%s): moved aside to %s, starting a new one at seq %d",
                          path, exc, target.name, max(floor, first))
                store = Store(path, self._wal_pages)
                count, size, hi, limit = store.check()
        except (sqlite3.Error, OSError, Corrupt) as exc:
            log.error("cannot use the spool at %s (%s): readings are kept in memory only and lost on restart",
                      path, exc)
            drops.cap(MEMORY_MAX_BYTES)
            seqfile.close()
            self._queue = Queue(Seqs(max(floor, first), seq_block, False), drops, Changes(interval, None))
            return
        first = max(first, floor, limit, hi + 1)
        self._store, self._seqfile, self._alarm = store, seqfile, Waker()
        # Nothing may be handed out before the first reservation (the commit below).
        self._queue = Queue(Seqs(first, seq_block, True), drops, Changes(interval, self._alarm, hi), store,
                            (count, size + count * ROW_OVERHEAD))
        if count:
            log.info("spool %s: %d readings not yet acknowledged are sent again first (seq %d on)",
                     path, count, first)
        self._queue.settle(self._clock())
        with self._commit_lock:
            self._commit()
        # The reservation just written armed the alarm: cleared (no wake-up for nothing), set again if due.
        self._alarm.set(None)
        if self._queue.wake():
            self._alarm.ring()
        self._thread = threading.Thread(target=self._run, name="spool-commit", daemon=True)
        self._thread.start()

    # -- committing -----------------------------------------------------------------------------

    def _run(self) -> None:
        alarm = self._alarm
        assert alarm is not None
        while True:
            alarm.wait()
            due = self._queue.wake()
            if due is None:
                return  # closed: close() makes the last commit
            if not due:
                continue  # early (a ring, or a deadline moved later): the alarm is set again
            failed = False
            with self._commit_lock:
                try:
                    self._commit()
                except Exception:
                    # A bug must not end durability quietly: say so, try again an interval later.
                    log.exception("spool commit failed unexpectedly; retrying in %.1f s", self._interval)
                    failed = True
            self._queue.reschedule(attempted=failed)

    def _commit(self, final: bool = False, recovered: bool = False) -> bool:
        """Under _commit_lock."""
        if self._queue.broken():
            self._recover("unreadable rows")
        self._check_files()
        store = self._store
        if store is None:
            return False
        commit = self._queue.begin_commit(final)
        if commit is None:
            return False
        error: Optional[BaseException] = None
        try:
            store.write(commit.rows, commit.deletes, commit.limit)
            if commit.limit is not None and self._seqfile is not None:
                self._seqfile.write(commit.limit)
        except (sqlite3.Error, OSError) as exc:
            error = exc
        reserved = False
        if error is not None and commit.limit is not None and not final and self._seqfile is not None:
            # The database cannot be written, the seq file perhaps can: the reservation it holds is
            # as good (the next start takes the larger of the two), and publishing need not pause.
            try:
                self._seqfile.write(commit.limit)
                reserved = True
            except OSError:
                pass
        self._queue.end_commit(commit, error is None, reserved)
        if error is None:
            if self._failures:
                log.info("spool commits work again (after %d failed)", self._failures)
                self._failures = 0
            return True
        self._failures += 1
        if is_corrupt(error) and not recovered:
            self._recover(str(error))
            return self._commit(final, recovered=True) if self._store is not None else False
        if self._failures == 1:
            log.warning("spool commit failed (%s): readings stay in memory; retrying every %.1f s",
                        error, self._interval)
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
            self._queue.swap_store(new)  # take() must not be reading through the connection being closed
            self._store = new
            store.close()
            log.error("spool file %s: %s while running: made a new one with the %d readings not yet "
                      "acknowledged", self.path, why, self._queue.depth())
            self._lost_file = None
        if seqfile is not None and seqfile.gone():
            try:
                self._seqfile = seqfile.renew(self._queue.reservation_floor())
            except (OSError, SpoolBusy) as exc:
                if self._lost_file != "seq":
                    self._lost_file = "seq"
                    log.error("spool seq file %s was removed while running and cannot be made again (%s); "
                              "retrying at every commit", seqfile.path, exc)
                return
            log.error("spool seq file %s was removed while running: made again", seqfile.path)

    def _recover(self, reason: str) -> None:
        """Under _commit_lock: the file went bad while running. Keep what memory holds, start a new file."""
        assert self.path is not None
        # The queue reads nothing stored while the file is replaced (take() hands out what memory holds).
        old = self._queue.swap_store(None)
        if old is not None:
            old.close()
        self._store = None
        target = self.path
        try:
            target = move_aside(self.path, self._clock())
            self._store = Store(self.path, self._wal_pages)
        except (sqlite3.Error, OSError, Corrupt) as exc:
            log.error("spool file %s went bad (%s) and no new one can be made (%s): in memory only from now on",
                      self.path, reason, exc)
        # Rows only the old file held are lost; everything in memory goes into the new file.
        lost, kept = self._queue.recover(self._store)
        if self._store is not None:
            log.error("spool file %s went bad (%s): moved aside to %s; %d readings only it held are lost, "
                      "%d kept in a new file", self.path, reason, target.name, lost, kept)

