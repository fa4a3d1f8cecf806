"""The spool's file by itself: the SQLite store, the record format, the seq file, a corrupt file.

Real files; through the store's public interface only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, List

import pytest

from agent.delivery.store import (
    Corrupt,
    SeqFile,
    SpoolBusy,
    Store,
    decode,
    encode,
    is_corrupt,
    move_aside,
    relocate,
    salvage,
)
from agent.sampling.reading import Reading, Sample

NOW = 1_700_000_000.0


def rows(*seq_numbers: int):
    return [(seq, encode(Sample("t", seq, "C", NOW + seq))) for seq in seq_numbers]


def test_a_record_is_short_and_comes_back_as_the_reading() -> None:
    plain = Sample("t", 21.5, "C", NOW)
    assert encode(plain) == b'[1700000000.0,"t",21.5,"C"]'  # quality "good" and no error: trimmed
    assert decode(7, encode(plain)) == Reading.numbered(7, plain)
    failed = Sample("t", None, None, NOW, quality="error", error="no ack")
    assert decode(8, encode(failed)) == Reading.numbered(8, failed)
    for bad in (b'{"ts": 1}', b'[1, "t"]', b'["x", "t", 1, "C"]'):
        with pytest.raises(ValueError):
            decode(1, bad)


class _Reprised(float):
    """A float whose repr is not a float's (numpy's float64 is one): JSON writes it as a float."""

    def __repr__(self) -> str:
        return "Reprised(%s)" % float.__repr__(self)


def test_a_record_is_the_json_encoders_byte_for_byte_whatever_the_reading_holds() -> None:
    # The common record is put together without the encoder: it must be the very same bytes.
    names = ["t", 'q"uote', "back\\slash", "pct%s", "caf\u00e9", "\u6e29\u5ea6", "tab\tline\n", ""]
    units = ["C", "%RH", None, "\u00b0C", '"']
    values: List[Any] = [21.5, -0.0, 0.1 + 0.2, 1e-7, 1e22, 5e-324, 1.7976931348623157e308, 0, -3, 10 ** 30,
                         True, None, float("nan"), float("inf"), "text", _Reprised(2.5)]
    stamps: List[Any] = [NOW, NOW + 0.123456789, 0.0, 1e-3, 1700000000, float("nan")]
    for name in names:
        for unit in units:
            for value in values:
                for ts in stamps:
                    for quality, error in (("good", None), ("out_of_range", None), ("error", "no ack")):
                        sample = Sample(name, value, unit, ts, quality=quality, error=error)
                        record: List[Any] = [ts, name, value, unit, quality, error]
                        if error is None:
                            record.pop()
                            if quality == "good":
                                record.pop()
                        assert encode(sample) == json.dumps(record, separators=(",", ":")).encode(), sample


def test_writes_loads_and_deletes_in_seq_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", 16)
    try:
        store.write(rows(3, 1, 2, 5), [], 100)
        assert [seq for seq, _ in store.load(0, 100, 10)] == [1, 2, 3, 5]
        assert [seq for seq, _ in store.load(1, 3, 10)] == [2, 3]  # after, up to
        assert [seq for seq, _ in store.load(0, 100, 2)] == [1, 2]  # at most
        store.write([], [2, 3], None)
        assert [seq for seq, _ in store.load(0, 100, 10)] == [1, 5]
        assert store.size_of(5) == len(rows(5)[0][1]) and store.size_of(2) is None
        count, size, hi, limit = store.check()
        assert (count, size, hi, limit) == (2, len(rows(1)[0][1]) + len(rows(5)[0][1]), 5, 100)
    finally:
        store.close()
    reopened = Store(tmp_path / "s.db", 16)  # the data outlives the connection
    try:
        assert reopened.seq_limit() == 100 and [s for s, _ in reopened.load(0, 100, 10)] == [1, 5]
    finally:
        reopened.close()


def test_a_file_that_is_not_a_spool_is_refused_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE readings (id TEXT, payload TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(Corrupt) as caught:
        Store(path, 16)
    assert is_corrupt(caught.value)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\xa5" * 8192)
    with pytest.raises(sqlite3.DatabaseError) as db_error:
        Store(garbage, 16).check()
    assert is_corrupt(db_error.value)


def test_the_file_is_the_owners_alone_and_has_no_shared_memory_index(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, 16)
    try:
        store.write(rows(1), [], None)
        assert os.stat(str(path)).st_mode & 0o777 == 0o600
        assert not os.path.exists(str(path) + "-shm")
    finally:
        store.close()


def test_gone_notices_the_file_removed_or_replaced_and_relocate_makes_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, 16)
    try:
        store.write(rows(1, 2), [], 50)
        assert store.gone() is None
        os.remove(str(path))
        assert store.gone() == "it was removed"
        new = relocate(store, 16, time.time())
        try:
            assert new.gone() is None
            assert [seq for seq, _ in new.load(0, 100, 10)] == [1, 2] and new.seq_limit() == 50
        finally:
            new.close()
    finally:
        store.close()


def test_the_seq_file_holds_one_limit_checked_and_locks_out_a_second_process(tmp_path: Path) -> None:
    path = tmp_path / "s.db.seq"
    first = SeqFile(path)
    try:
        assert first.read() == 0
        first.write(123_456_789)
        assert first.read() == 123_456_789
        with pytest.raises(SpoolBusy):
            SeqFile(path)
        with open(path, "r+b") as f:  # a torn write: the checksum no longer matches
            f.write(b"f")
        assert first.read() == 0
    finally:
        first.close()
    SeqFile(path).close()  # free again once closed


def test_a_corrupt_file_is_moved_aside_the_newest_three_kept_and_what_it_tells_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, 16)
    store.write(rows(7, 9), [], 40)
    store.close()
    assert salvage(path) == 40  # the larger of its reservation and its highest seq + 1
    assert salvage(tmp_path / "missing.db") == 0
    for hour in range(5):
        path.write_bytes(b"bad")
        target = move_aside(path, NOW + 3600 * hour)
        assert not path.exists() and target.name.startswith("s.db.corrupt-")
    aside = sorted(p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name)
    assert len(aside) == 3 and aside[-1] == target.name
