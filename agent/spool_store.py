"""The spool's file: the SQLite store, its record format, the seq reservation file, and what
happens to a file that is corrupt. agent/spool.py keeps the queue and its policies."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any, List, Optional, Tuple

from agent.reading import GOOD, Reading, Sample

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
    record: List[Any] = [sample.ts, sample.sensor, sample.value, sample.unit, sample.quality, sample.error]
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


class SeqFile:
    """`<spool>.seq`: the seq reservation (a second copy, outside the database) and the process lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise SpoolBusy("%s is locked by another process: is another agent running with this spool?"
                            % path) from None

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

    def close(self) -> None:
        os.close(self.fd)  # releases the lock


class Store:
    """The SQLite file: a writer connection (committer only) and a reader (under the spool lock)."""

    def __init__(self, path: Path, wal_pages: int) -> None:
        self.path = path
        self.writer: Optional[sqlite3.Connection] = None
        self.reader: Optional[sqlite3.Connection] = None
        try:
            self.writer = self._connect()
            w = self.writer
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
            self.reader = self._connect()
            self.reader.execute("PRAGMA query_only=ON")
            self.reader.execute("PRAGMA cache_size=-1024")
        except BaseException:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False)

    def check(self) -> Tuple[int, int, int, int]:
        """Verify the file; (count, sum of record sizes, highest seq, stored seq limit)."""
        assert self.writer is not None
        problems = self.writer.execute("PRAGMA quick_check(1)").fetchall()
        if problems != [("ok",)]:
            raise Corrupt("integrity check: %s" % (problems[0][0] if problems else "no answer"))
        count, size, hi = self.writer.execute(
            "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(max(seq), 0) FROM readings").fetchone()
        return int(count), int(size), int(hi), self.seq_limit()

    def seq_limit(self) -> int:
        assert self.writer is not None
        row = self.writer.execute("SELECT value FROM meta WHERE key = 'seq_limit'").fetchone()
        return int(row[0]) if row else 0

    def load(self, after: int, upto: int, limit: int) -> List[Tuple[int, bytes]]:
        assert self.reader is not None
        rows = self.reader.execute("SELECT seq, data FROM readings WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                                   (after, upto, limit)).fetchall()
        return [(int(seq), bytes(data)) for seq, data in rows]

    def size_of(self, seq: int) -> Optional[int]:
        assert self.reader is not None
        row = self.reader.execute("SELECT length(data) FROM readings WHERE seq = ?", (seq,)).fetchone()
        return int(row[0]) if row else None

    def write(self, rows: List[Tuple[int, bytes]], deletes: List[int], limit: Optional[int]) -> None:
        """One transaction, one fsync of the WAL (SQLite checkpoints on its own every wal_pages)."""
        w = self.writer
        assert w is not None
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
        for conn in (self.reader, self.writer):
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
        self.reader = self.writer = None


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
