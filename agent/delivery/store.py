"""The spool's file: the SQLite store, its record format, the seq reservation file, and what
happens to a file that is corrupt. agent/delivery/spool.py keeps the queue and its policies."""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import sqlite3
import threading
import time
import zlib
from pathlib import Path
from typing import Any, List, Optional, Tuple

from agent.sampling.reading import GOOD, Reading, Sample

log = logging.getLogger(__name__)

# SQLite's cost of a row beyond its record: rowid and lengths in the cell, cell pointer, page slack.
ROW_OVERHEAD = 12
PAGE = 4096
_AUTO_VACUUM = "INCREMENTAL"
_KEEP_CORRUPT = 3
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS readings (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


class SpoolBusy(RuntimeError):
    """Another process has this spool open: two agents must not share one seq."""


class Corrupt(Exception):
    pass


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps with options builds one per call


def encode(sample: Sample) -> bytes:
    """[ts, sensor, value, unit, quality, error], defaults trimmed from the end."""
    ts, value = sample.ts, sample.value
    kind = type(value)
    # The common record, [ts, "sensor", value, "unit"], is formatted directly: the encoder's very
    # bytes (it writes an int or a float as its repr too, and quotes a str with encode()), in
    # about half its time; every reading is encoded. Anything else goes through the encoder.
    # tests/test_store.py compares the two.
    if (sample.error is None and sample.quality == GOOD and type(ts) is float and math.isfinite(ts)
            and (kind is int or kind is float and math.isfinite(value))):  # type: ignore[arg-type]
        unit = "null" if sample.unit is None else _ENCODER.encode(sample.unit)
        return ("[%r,%s,%r,%s]" % (ts, _ENCODER.encode(sample.sensor), value, unit)).encode("ascii")
    record: List[Any] = [ts, sample.sensor, value, sample.unit, sample.quality, sample.error]
    if sample.error is None:
        record.pop()
        if sample.quality == GOOD:
            record.pop()
    return _ENCODER.encode(record).encode("utf-8")


def decode(seq: int, blob: bytes) -> Reading:
    record = json.loads(blob)
    if not isinstance(record, list) or not 4 <= len(record) <= 6:
        raise ValueError("not a reading record")
    ts, sensor, value, unit = record[:4]
    quality = record[4] if len(record) > 4 else GOOD
    error = record[5] if len(record) > 5 else None
    if (not isinstance(ts, (int, float)) or not isinstance(sensor, str) or not isinstance(quality, str)
            or not (value is None or isinstance(value, (int, float)))
            or not (unit is None or isinstance(unit, str)) or not (error is None or isinstance(error, str))):
        raise ValueError("not a reading record")
    return Reading(seq=seq, ts=float(ts), sensor=sensor, value=value, unit=unit, quality=quality, error=error)


def is_corrupt(exc: BaseException) -> bool:
    if isinstance(exc, Corrupt):
        return True
    name = getattr(exc, "sqlite_errorname", None)
    if name is not None:
        return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or str(name).startswith("SQLITE_CORRUPT")
    # Python < 3.11: corruption is a plain DatabaseError, not one of its subclasses.
    return type(exc) is sqlite3.DatabaseError


def _own_file(path: Path) -> None:
    """The database file, created (or found) 0600 before SQLite opens it, whatever the umask:
    SQLite gives its -wal and -journal files the database file's mode. O_NOFOLLOW: a symlink
    planted in its place is refused (ELOOP), not written through."""
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        if os.fstat(fd).st_mode & 0o177:
            os.fchmod(fd, 0o600)  # readings are the owner's: a file from an older agent was 0644
    finally:
        os.close(fd)


class SeqFile:
    """`<spool>.seq`: the seq reservation (a second copy, outside the database) and the process lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # O_NOFOLLOW: a symlink planted in the state directory is refused, not written through.
        self.fd = os.open(str(path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SpoolBusy("%s is locked by another process: is another agent running with this spool?"
                            % path) from None
        st = os.fstat(self.fd)
        if st.st_mode & 0o177:
            os.fchmod(self.fd, 0o600)
        self.identity = (st.st_dev, st.st_ino)

    def gone(self) -> bool:
        """Whether the file at `path` is no longer this one (removed or replaced)."""
        try:
            st = os.stat(str(self.path))
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self.identity

    def read(self) -> int:
        raw = os.pread(self.fd, 64, 0)
        try:
            limit_hex, crc_hex = raw.split(b"\n", 1)[0].split(b" ")
            if zlib.crc32(limit_hex) != int(crc_hex, 16):
                return 0
            return int(limit_hex, 16)
        except ValueError:
            return 0

    def write(self, limit: int) -> None:
        # Fixed size, in place: one block rewritten, no metadata change; a torn write fails the CRC.
        digits = b"%016x" % limit
        os.pwrite(self.fd, b"%s %08x\n" % (digits, zlib.crc32(digits)), 0)
        os.fdatasync(self.fd)

    def renew(self, floor: int) -> "SeqFile":
        """This file was removed or replaced: a new one at its path, holding the larger of what this
        one holds and `floor`; this one is closed. Raises OSError or SpoolBusy (then it is not)."""
        fresh = SeqFile(self.path)
        try:
            fresh.write(max(self.read(), floor))
        except OSError:
            fresh.close()
            raise
        self.close()
        return fresh

    def close(self) -> None:
        os.close(self.fd)  # releases the lock


class Store:
    """The SQLite file, through one connection: the committer writes, the spool's reader loads.

    WAL in EXCLUSIVE locking mode: the WAL index lives in this process's heap, not in a
    `-shm` file mapped into memory. A mapped file that is taken away (made immutable, on a
    filesystem gone bad, truncated) kills the process with SIGBUS at the next store to it, with
    no log line; a write error on an ordinary file is an error SQLite reports, which the spool
    handles (readings stay in memory, commits are retried). The cost: one connection, so a
    load waits for a commit in progress (only while a stored backlog is read back; measured in
    bench/spool_bench.py), and no other process can open the file while the agent has it (the
    .seq lock keeps a second agent out anyway).
    """

    def __init__(self, path: Path, wal_pages: int) -> None:
        self.path = path
        self.conn: Optional[sqlite3.Connection] = None
        # One statement or transaction at a time: a load must not see a half-written commit.
        self._lock = threading.Lock()
        try:
            _own_file(path)
            self.conn = self._connect()
            w = self.conn
            # Before WAL is first used on this connection: then it never creates or maps a -shm file.
            w.execute("PRAGMA locking_mode=EXCLUSIVE")
            # Nor the database file itself (SQLite's default here, said so it stays that way).
            w.execute("PRAGMA mmap_size=0")
            # page_size and auto_vacuum only take effect on a new file, before the first table.
            w.execute("PRAGMA page_size=%d" % PAGE)
            w.execute("PRAGMA auto_vacuum=%s" % _AUTO_VACUUM)
            mode = w.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise sqlite3.OperationalError("cannot use WAL mode on %s (got %r)" % (path, mode))
            # FULL: the WAL is synced at each commit, so a commit survives a power cut.
            w.execute("PRAGMA synchronous=FULL")
            # Some builds (Debian's) zero freed pages: writes for nothing, the readings are not secret.
            w.execute("PRAGMA secure_delete=OFF")
            w.execute("PRAGMA wal_autocheckpoint=%d" % wal_pages)
            w.execute("PRAGMA journal_size_limit=%d" % (wal_pages * PAGE))
            w.execute("PRAGMA cache_size=-1024")
            for statement in _SCHEMA:
                w.execute(statement)
            columns = [row[1] for row in w.execute("PRAGMA table_info(readings)").fetchall()]
            if columns != ["seq", "data"]:
                raise Corrupt("not a spool file (readings table has columns %s)" % columns)
            # The exclusive lock is taken at the first read: from here on the file is ours alone.
            w.execute("SELECT count(*) FROM meta").fetchone()
        except BaseException:
            self.close()
            raise
        # A -shm left by an agent that shared its index (or by anyone): unused now, and ours to remove.
        try:
            os.remove(str(path) + "-shm")
        except OSError:
            pass
        st = os.stat(str(path))
        self.identity = (st.st_dev, st.st_ino)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False)

    def gone(self) -> Optional[str]:
        """Why the file at `path` is no longer the one this store writes to (removed, replaced); None if it is."""
        try:
            st = os.stat(str(self.path))
        except FileNotFoundError:
            return "it was removed"
        except OSError as exc:
            return "it cannot be reached (%s)" % (exc.strerror or exc)
        if (st.st_dev, st.st_ino) != self.identity:
            return "another file took its place"
        return None

    def check(self) -> Tuple[int, int, int, int]:
        """Verify the file; (count, sum of record sizes, highest seq, stored seq limit)."""
        assert self.conn is not None
        with self._lock:
            problems = self.conn.execute("PRAGMA quick_check(1)").fetchall()
            if problems != [("ok",)]:
                raise Corrupt("integrity check: %s" % (problems[0][0] if problems else "no answer"))
            count, size, hi = self.conn.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(max(seq), 0) FROM readings").fetchone()
        return int(count), int(size), int(hi), self.seq_limit()

    def seq_limit(self) -> int:
        assert self.conn is not None
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'seq_limit'").fetchone()
        return int(row[0]) if row else 0

    def load(self, after: int, upto: int, limit: int) -> List[Tuple[int, bytes]]:
        assert self.conn is not None
        with self._lock:
            rows = self.conn.execute("SELECT seq, data FROM readings WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                                     (after, upto, limit)).fetchall()
        return [(int(seq), bytes(data)) for seq, data in rows]

    def size_of(self, seq: int) -> Optional[int]:
        assert self.conn is not None
        with self._lock:
            row = self.conn.execute("SELECT length(data) FROM readings WHERE seq = ?", (seq,)).fetchone()
        return int(row[0]) if row else None

    def write(self, rows: List[Tuple[int, bytes]], deletes: List[int], limit: Optional[int]) -> None:
        """One transaction, one fsync of the WAL (SQLite checkpoints on its own every wal_pages)."""
        w = self.conn
        assert w is not None
        with self._lock:
            w.execute("BEGIN IMMEDIATE")
            try:
                if rows:
                    # OR REPLACE: a commit whose outcome was unknown (an I/O error) may be written again.
                    w.executemany("INSERT OR REPLACE INTO readings (seq, data) VALUES (?, ?)", rows)
                if deletes:
                    w.executemany("DELETE FROM readings WHERE seq = ?", [(seq,) for seq in deletes])
                    self._shrink(w)
                if limit is not None:
                    w.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('seq_limit', ?)", (limit,))
                w.execute("COMMIT")
            except BaseException:
                if w.in_transaction:
                    try:
                        w.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    @staticmethod
    def _shrink(w: sqlite3.Connection) -> None:
        # FIFO churn reuses freed pages, so the file stays at its high-water mark without help.
        # After a large backlog drained, give most of the free pages back (inside this transaction).
        free = int(w.execute("PRAGMA freelist_count").fetchone()[0])
        pages = int(w.execute("PRAGMA page_count").fetchone()[0])
        if free >= 256 and free * 4 >= pages:
            for _ in range(free - 64):
                # Each execution frees one page (sqlite3 steps a PRAGMA once).
                w.execute("PRAGMA incremental_vacuum(1)")

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(str(self.path) + suffix).st_size
            except OSError:
                pass
        return total

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass


def wal_pages(max_bytes: int) -> int:
    """When the WAL is checkpointed: at a quarter of max_bytes, at least 64 KiB, at most 4 MiB."""
    return max(16, min(1024, max_bytes // 4 // PAGE))


def salvage(path: Path) -> int:
    """What a corrupt file still tells of the seqs it used (its reservation, its highest row + 1); 0 if nothing."""
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


def move_aside(path: Path, now: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name("%s.corrupt-%s" % (path.name, stamp))
    n = 1
    while target.exists():
        target = path.with_name("%s.corrupt-%s-%d" % (path.name, stamp, n))
        n += 1
    if path.exists():
        os.replace(str(path), str(target))
    for suffix in ("-wal", "-journal"):
        if os.path.exists(str(path) + suffix):
            os.replace(str(path) + suffix, str(target) + suffix)
    try:
        os.remove(str(path) + "-shm")
    except FileNotFoundError:
        pass
    # A failing disk must not fill up with old spools: keep the newest few.
    old = sorted(p for p in path.parent.glob(path.name + ".corrupt-*") if not p.name.endswith(("-wal", "-journal")))
    for stale in old[:-_KEEP_CORRUPT]:
        for suffix in ("", "-wal", "-journal"):
            try:
                os.remove(str(stale) + suffix)
            except FileNotFoundError:
                pass
    return target


def relocate(old: Store, wal_pages: int, now: float) -> Store:
    """The spool file was removed or replaced under the running agent: a new file at the same
    path with every row the old one holds (the old one is still open, so nothing is lost), and
    its seq reservation. What took its place, if anything, is moved aside first. Raises
    OSError or sqlite3.Error (then the old store is still the one in use)."""
    path = old.path
    if os.path.lexists(str(path)):
        move_aside(path, now)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    new = Store(path, wal_pages)
    try:
        after = 0
        while True:
            rows = old.load(after, 2 ** 62, 4096)
            if not rows:
                break
            new.write(rows, [], None)
            after = rows[-1][0]
        new.write([], [], old.seq_limit() or None)
    except BaseException:
        new.close()
        raise
    return new
