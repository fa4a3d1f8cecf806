"""The stored backlog read back: a few hundred rows at a time, so memory does not grow with it.

After an outage (or a restart) the readings wait in the file; the queue hands them out in
seq order through this read-ahead before what was appended since. Not thread-safe by itself:
its owner (the queue) calls it under its own lock only; the store's lock is a leaf below it.
"""

from __future__ import annotations

import collections
from typing import Callable, Deque, List, Optional, Tuple

from agent.delivery.changes import Entry
from agent.delivery.store import ROW_OVERHEAD, Store, decode, is_corrupt

_READAHEAD = 256

# (seq, stored length, why): a stored row that is no reading any more.
Unreadable = Tuple[int, int, Exception]


class ReadBack:
    """Stored rows after the queue's cursor, loaded ahead; and whether the file is still readable."""

    def __init__(self, store: Optional[Store]) -> None:
        self._store = store  # None: memory only (or while a bad file is replaced)
        self._broken = False  # a read met corruption: the committer moves the file aside
        self._rows: Deque[Entry] = collections.deque()
        self._hi = 0  # stored rows up to here were loaded (or skipped)

    def durable(self) -> bool:
        return self._store is not None

    def broken(self) -> bool:
        return self._broken

    def swap(self, store: Optional[Store]) -> Optional[Store]:
        old, self._store = self._store, store
        return old

    def head(self) -> Optional[Entry]:
        return self._rows[0] if self._rows else None

    def pop(self, entry: Entry) -> None:
        """`entry` leaves the read-ahead (handed out or dropped), if it is its head."""
        if self._rows and self._rows[0] is entry:
            self._rows.popleft()

    def remove(self, seq: int) -> Optional[Entry]:
        for entry in self._rows:
            if entry.seq == seq:
                self._rows.remove(entry)
                return entry
        return None

    def pending(self, cursor: int, stored_hi: int) -> bool:
        """Whether any stored row after `cursor` is read ahead or still to be loaded."""
        return bool(self._rows) or max(cursor, self._hi) < stored_hi

    def behind(self, cursor: int, stored_hi: int) -> bool:
        """Whether stored rows after `cursor` are still to be loaded."""
        return max(cursor, self._hi) < stored_hi

    def load(self, cursor: int, stored_hi: int, leaving: Callable[[int], bool]) -> List[Unreadable]:
        """The next rows after `cursor` (not `leaving`); returns the rows that cannot be decoded.
        Raises sqlite3.Error (see failed())."""
        assert self._store is not None
        rows = self._store.load(max(cursor, self._hi), stored_hi, _READAHEAD)
        self._hi = rows[-1][0] if len(rows) == _READAHEAD else stored_hi
        bad: List[Unreadable] = []
        for seq, blob in rows:
            if leaving(seq):
                continue
            try:
                reading = decode(seq, blob)
            except (ValueError, TypeError) as exc:
                bad.append((seq, len(blob), exc))
                continue
            self._rows.append(Entry(reading, blob, len(blob) + ROW_OVERHEAD))
        return bad

    def readable(self) -> bool:
        return self._store is not None and not self._broken

    def size_of(self, seq: int) -> Optional[int]:
        """A stored row's size as the spool counts it; None if it is not there. Raises sqlite3.Error."""
        assert self._store is not None
        size = self._store.size_of(seq)
        return size + ROW_OVERHEAD if size is not None else None

    def failed(self, exc: Exception) -> bool:
        """A read failed: True if it is news that the file is corrupt (the committer must know)."""
        if not is_corrupt(exc) or self._broken:
            return False
        self._broken = True
        return True

    def restart(self, store: Optional[Store]) -> List[Entry]:
        """A new file (or none): what was read ahead is handed back, nothing more is stored."""
        rows = list(self._rows)
        self._rows.clear()
        self._store, self._broken, self._hi = store, False, 0
        return rows
