"""The durable spool: real files, real processes killed with SIGKILL, a reference model, threads."""

from __future__ import annotations

import collections
import errno
import logging
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.delivery import seqs as seqs_module
from agent.delivery.spool import AGE, FULL, Spool, SpoolBusy
from agent.delivery.store import ROW_OVERHEAD, SeqFile, Store, encode
from agent.sampling.reading import Reading, Sample
from conftest import ROOT

NOW = float(int(time.time()))  # the machine's clock: readings must not be old by the default max_age


def sample(i: int, sensor: str = "t", ts: Optional[float] = None) -> Sample:
    return Sample(sensor, i, "C", NOW + i if ts is None else ts)


def fixed(i: int) -> Sample:
    """Readings of one size (for i < 90,000)."""
    return Sample("t", 10_000 + i, "C", NOW + i)


def size_of(s: Sample) -> int:
    return len(encode(s)) + ROW_OVERHEAD


def seqs(readings: List[Reading]) -> List[int]:
    return [r.seq for r in readings]


def spool_records(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "agent.delivery.spool"]


def file_bytes(path: Path) -> int:
    return sum(os.path.getsize(str(path) + s) for s in ("", "-wal") if os.path.exists(str(path) + s))


@pytest.fixture(autouse=True)
def seq_from_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests here count seq from 1, as a spool does when the clock says 1970: the clock's floor
    (SEQ_PER_SECOND) has its own tests in test_state_files.py."""
    monkeypatch.setattr(seqs_module, "SEQ_PER_SECOND", 0)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "spool.db"


# -- the interface ------------------------------------------------------------------------------

@pytest.mark.parametrize("durable", [False, True])
def test_take_release_ack(durable: bool, db: Path) -> None:
    with Spool(db if durable else None) as spool:
        appended = [spool.append(sample(i)) for i in range(10)]
        assert seqs(appended) == list(range(1, 11))
        assert appended[3].value == 3 and appended[3].sensor == "t" and appended[3].unit == "C"
        assert (spool.depth, spool.in_flight) == (10, 0)

        first = spool.take(4)
        assert seqs(first) == [1, 2, 3, 4]
        assert (spool.depth, spool.in_flight) == (10, 4)
        spool.ack([1, 3])
        assert (spool.depth, spool.in_flight) == (8, 2)
        spool.release([first[3], first[1]])  # back at the front, in seq order
        assert spool.in_flight == 0
        assert seqs(spool.take(3)) == [2, 4, 5]
        spool.ack([1, 3, 99])  # already gone, never existed: nothing happens
        assert spool.depth == 8
        spool.ack([7])  # never handed out: it leaves all the same
        assert seqs(spool.take(10)) == [6, 8, 9, 10]
        assert spool.take(5) == []
        assert (spool.depth, spool.in_flight) == (7, 7)
        assert not spool.wait_empty(0.05)
        threading.Timer(0.05, spool.ack, args=([2, 4, 5, 6, 8, 9, 10],)).start()
        assert spool.wait_empty(5)
        assert spool.depth == 0 and spool.dropped == 0


def test_readings_come_back_in_order_after_reopen_and_seq_continues(db: Path) -> None:
    with Spool(db) as spool:
        for i in range(10):
            spool.append(sample(i, sensor="s%d" % (i % 3)))
        taken = spool.take(4)
        spool.ack([1, 3])
        spool.release(taken[3:])
        assert seqs(spool.take(1)) == [4]  # in flight when the agent stops: unsent again next time
    with Spool(db) as spool:
        assert (spool.depth, spool.in_flight) == (8, 0)
        back = spool.take(100)
        assert seqs(back) == [2, 4, 5, 6, 7, 8, 9, 10]
        assert [(r.sensor, r.value, r.ts) for r in back] == [("s%d" % ((s - 1) % 3), s - 1, NOW + s - 1)
                                                             for s in seqs(back)]
        # A clean close leaves no gap.
        assert spool.append(sample(10)).seq == 11
        spool.ack(seqs(back))
    with Spool(db) as spool:
        assert seqs(spool.take(100)) == [11]
        assert spool.append(sample(11)).seq == 12


def test_reading_fields_survive_the_file(db: Path) -> None:
    odd = [Sample("a", None, None, NOW, quality="error", error="i2c: no ack"),
           Sample("b", 3, "count", NOW + 0.123456789),
           Sample("c", -1.5e-300, "ü", NOW, quality="stale"),
           Sample("d", True, None, NOW),
           Sample("e", float("inf"), "x", NOW)]
    with Spool(db) as spool:
        for s in odd:
            spool.append(s)
    with Spool(db) as spool:
        back = spool.take(10)
    assert [Reading.numbered(i + 1, s) for i, s in enumerate(odd)] == back
    assert type(back[1].value) is int and type(back[3].value) is bool


def test_take_hands_out_only_durably_reserved_seqs(db: Path) -> None:
    with Spool(db, commit_interval=3600, seq_block=10) as spool:
        for i in range(25):
            spool.append(sample(i))
        # Reserved at open: seqs 1-10. The rest waits for the commit that extends the reservation.
        assert seqs(spool.take(100)) == list(range(1, 11))
        assert spool.commit()
        assert seqs(spool.take(100)) == list(range(11, 26))


def test_second_process_on_the_same_spool_is_refused(db: Path) -> None:
    with Spool(db):
        with pytest.raises(SpoolBusy):
            Spool(db)
    Spool(db).close()  # free again once closed


def test_unusable_path_falls_back_to_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with Spool(tmp_path / "a-file" / "spool.db") as spool:
        assert spool.append(sample(0)).seq == 1
        assert seqs(spool.take(5)) == [1]
        assert not spool.stats().durable
    assert len([r for r in spool_records(caplog) if r.levelno == logging.ERROR]) == 1


def test_append_after_close_is_refused(db: Path) -> None:
    spool = Spool(db)
    spool.close()
    spool.close()  # twice is fine
    with pytest.raises(RuntimeError):
        spool.append(sample(0))


def test_stats(db: Path) -> None:
    with Spool(db, max_bytes=10_000, commit_interval=3600) as spool:
        for i in range(5):
            spool.append(sample(i))
        spool.take(2)
        spool.commit()
        st_ = spool.stats()
        assert (st_.durable, st_.depth, st_.in_flight, st_.max_bytes) == (True, 5, 2, 10_000)
        assert st_.bytes == sum(size_of(sample(i)) for i in range(5))
        assert st_.commits == 2  # the reservation at open, then this one
        assert st_.last_commit_age is not None and 0 <= st_.last_commit_age < 5
        assert st_.file_bytes > 0 and st_.dropped == 0
        assert "5 readings (2 in flight)" in st_.describe()
    assert Spool().stats().last_commit_age is None


# -- crashes ----------------------------------------------------------------------------------------

CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from agent.delivery.spool import Spool
from agent.sampling.reading import Sample
run = int(sys.argv[2])
spool = Spool(Path(sys.argv[1]), commit_interval=0.01, seq_block=40)
out = sys.stdout
i = 0
while True:
    r = spool.append(Sample("run%d" % run, i, "n", time.time()))
    out.write("P %d %d\n" % (r.seq, i))
    i += 1
    if i % 7 == 0:
        taken = spool.take(5)
        for t in taken:
            out.write("T %d\n" % t.seq)
        out.write("A %s\n" % " ".join(str(t.seq) for t in taken[:3]))  # before: it may be committed at once
        spool.ack([t.seq for t in taken[:3]])
        spool.release(taken[3:4])
    if i % 40 == 0:
        spool.commit()
        out.write("C %d\n" % r.seq)
    out.flush()
"""


def _run_and_kill(db: Path, run: int, rng: random.Random) -> List[List[str]]:
    lines: List[bytes] = []
    started = threading.Event()
    with subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(run), str(ROOT)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None

        def drain() -> None:  # all the time, so the child never waits on a full pipe
            for line in stdout:
                lines.append(line)
                started.set()
            started.set()

        reader = threading.Thread(target=drain)
        reader.start()
        assert started.wait(30) and lines, stderr.read()
        time.sleep(rng.uniform(0.02, 0.4))
        proc.send_signal(signal.SIGKILL)
        reader.join(10)
        err = stderr.read()
        assert proc.wait(10) == -signal.SIGKILL, err
    # The last line may have been cut by the kill.
    return [line.decode().split() for line in lines if line.endswith(b"\n")]


def test_kill_9_at_random_moments(db: Path) -> None:
    rng = random.Random(4)
    handed_out_before = 0
    for run in range(6):
        lines = _run_and_kill(db, run, rng)
        appended = {int(f[1]): int(f[2]) for f in lines if f[0] == "P"}
        taken = [int(f[1]) for f in lines if f[0] == "T"]
        # seq only grows: nothing this run numbered was handed out by an earlier one.
        assert min(appended) > handed_out_before
        handed_out_before = max(taken + [handed_out_before])
        if run % 3 == 2:
            continue  # the next child opens the file exactly as this one left it
        committed_hi = 0
        acked_by_then: Set[int] = set()
        acked: Set[int] = set()
        for f in lines:
            if f[0] == "A":
                acked.update(int(x) for x in f[1:])
            elif f[0] == "C":
                committed_hi, acked_by_then = int(f[1]), set(acked)
        with Spool(db, commit_interval=3600) as spool:
            back = spool.take(1_000_000)
            got = seqs(back)
            assert got == sorted(set(got))  # in order, no repeats
            assert spool.depth == len(back)
            assert all(r.sensor.startswith("run") and r.unit == "n" for r in back)
            mine = [r for r in back if r.sensor == "run%d" % run and r.seq in appended]
            assert all(r.value == appended[r.seq] for r in mine)  # nothing corrupted
            # Everything committed and not acknowledged is back; what was acknowledged by then is not.
            expected = {s for s in appended if s <= committed_hi} - acked
            assert expected <= set(got)
            assert not (acked_by_then & set(got))
            spool.ack([r.seq for r in back if r.sensor != "run%d" % run])  # keep the file small


# -- bounds -----------------------------------------------------------------------------------------

def test_full_spool_drops_the_oldest_counts_them_and_stays_bounded(db: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.delivery.spool")
    one = size_of(fixed(0))
    assert all(size_of(fixed(i)) == one for i in range(20_000))
    with Spool(db, max_bytes=40 * one, commit_interval=3600) as spool:
        sizes = []
        for i in range(20_000):
            spool.append(fixed(i))
            if i % 200 == 199:
                spool.commit()
                sizes.append(file_bytes(db))
        assert spool.depth == 40
        assert spool.stats().bytes == 40 * one
        assert spool.dropped == spool.stats().dropped_full == 20_000 - 40
        assert seqs(spool.take(100)) == list(range(19_961, 20_001))  # exactly the newest are left
        # The file does not grow: database plus WAL, give or take one transaction over the WAL's limit.
        assert max(sizes) < 200_000 and max(sizes[50:]) <= max(sizes[:50]) + 16384
        warnings = [r for r in spool_records(caplog) if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "spool full" in warnings[0].getMessage()
        spool.ack(range(19_961, 20_001))
        spool.append(fixed(0))  # the episode is over: one line with its count
        ends = [r.getMessage() for r in spool_records(caplog) if r.levelno == logging.INFO]
        assert any("19960 readings dropped" in m for m in ends)


def test_readings_in_flight_are_not_dropped(db: Path) -> None:
    one = size_of(fixed(0))
    with Spool(db, max_bytes=5 * one) as spool:
        for i in range(5):
            spool.append(fixed(i))
        spool.take(3)
        for i in range(5, 9):
            spool.append(fixed(i))
        # Over by one at each append: 4 and 5 go, then 6 and 7; 1-3 stay, in flight.
        assert spool.dropped == 4
        assert seqs(spool.take(10)) == [8, 9]
        spool.ack([1, 2, 3])
        assert spool.depth == 2


def test_max_age_drops_by_sampling_time(db: Path) -> None:
    clock = [NOW]
    with Spool(db, max_age=100, clock=lambda: clock[0]) as spool:
        for i in range(10):
            spool.append(sample(i, ts=NOW - 95 + i))  # seq 1-10, 95 to 86 s old
        spool.append(Sample("before-ntp", 1, None, 1000.0))  # seq 11: a clock NTP had not set, age unknown
        clock[0] += 6
        assert seqs(spool.take(1)) == [2]  # 1 is 101 s old
        assert spool.stats().dropped_age == 1
        clock[0] += 50
        for i in range(10, 15):
            spool.append(sample(i, ts=clock[0]))  # seq 12-16; 3-10 are too old now
        assert spool.stats().dropped_age == 9
        assert seqs(spool.take(100)) == [11, 12, 13, 14, 15, 16]
        assert spool.dropped == 9 and spool.stats().dropped_full == 0
        spool.ack([2, 11])
    clock[0] += 200
    with Spool(db, max_age=100, clock=lambda: clock[0]) as spool:  # what is on disk ages too
        assert spool.stats().dropped_age == 5
        assert spool.depth == 0 and spool.take(100) == []


def test_file_shrinks_after_a_large_backlog_drains(db: Path) -> None:
    with Spool(db, commit_interval=3600) as spool:
        for i in range(30_000):
            spool.append(sample(i))
            if i % 5000 == 4999:
                spool.commit()
        spool.commit()
        peak = file_bytes(db)
        assert peak > 30_000 * 30
        spool.ack(range(1, 30_001))
        spool.commit()
    assert file_bytes(db) < peak / 4  # most of the free pages went back to the filesystem


def test_file_stays_bounded_under_churn(db: Path) -> None:
    # The WAL may grow to a quarter of max_bytes (at most 4 MiB) before it is checkpointed: 64 KiB here.
    with Spool(db, max_bytes=256 * 1024, commit_interval=3600) as spool:
        sizes = []
        behind: List[int] = []
        for i in range(40_000):
            spool.append(sample(i))
            if i % 100 == 99:
                got = seqs(spool.take(100))
                spool.ack(behind + got[:-10])  # a few are acknowledged a round late
                behind = got[-10:]
                spool.commit()
                sizes.append((os.path.getsize(db), file_bytes(db)))
        assert max(whole for _, whole in sizes) < 64 * 1024 + 80_000
        assert max(base for base, _ in sizes[200:]) <= max(base for base, _ in sizes[:200])


# -- corrupt files -----------------------------------------------------------------------------------

def _assert_moved_aside_and_working(db: Path, caplog: pytest.LogCaptureFixture, min_seq: int) -> None:
    with Spool(db) as spool:
        assert spool.depth == 0
        first = spool.append(sample(0)).seq
        assert first >= min_seq
    records = spool_records(caplog)
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert "moved aside" in records[0].getMessage()
    aside = [p.name for p in db.parent.iterdir() if ".corrupt-" in p.name]
    assert len([n for n in aside if not n.endswith("-wal")]) == 1
    with Spool(db) as spool:  # and the new one is a good one
        assert seqs(spool.take(5)) == [first]


def test_garbage_file_is_moved_aside(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    db.parent.mkdir()
    db.write_bytes(random.Random(1).randbytes(20_000))
    _assert_moved_aside_and_working(db, caplog, 1)


def test_truncated_file_is_moved_aside_and_seq_continues(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Spool(db) as spool:
        for i in range(5000):
            spool.append(sample(i))
    with open(db, "r+b") as f:
        f.truncate(os.path.getsize(db) // 2)
    caplog.clear()
    _assert_moved_aside_and_working(db, caplog, 5001)


def test_foreign_sqlite_file_is_moved_aside(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    db.parent.mkdir()
    conn = sqlite3.connect(str(db))
    conn.execute("CREATE TABLE readings (id TEXT, payload TEXT)")
    conn.commit()
    conn.close()
    _assert_moved_aside_and_working(db, caplog, 1)


def test_empty_file_is_a_new_spool(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    db.parent.mkdir()
    db.write_bytes(b"")
    with Spool(db) as spool:
        spool.append(sample(0))
    assert not spool_records(caplog)


def test_file_going_bad_while_running_keeps_what_memory_holds(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Larger than the connection's page cache (1 MiB), so the damaged pages are read from the file again.
    with Spool(db) as spool:
        for i in range(40_000):
            spool.append(sample(i))
    with Spool(db, commit_interval=0.05) as spool:
        assert seqs(spool.take(2)) == [1, 2]  # read ahead: in memory from now on
        with open(db, "r+b") as f:  # a disk error under the running agent
            f.seek(8192)
            f.write(b"\xa5" * 40_000)
        got = spool.take(10_000)
        deadline = time.monotonic() + 5
        while not any("went bad" in r.getMessage() for r in spool_records(caplog)):
            assert time.monotonic() < deadline
            got += spool.take(10_000)
            time.sleep(0.01)
        got += spool.take(10_000)
        st_ = spool.stats()
        assert seqs(got) == sorted(seqs(got)) and st_.dropped_corrupt > 0
        assert st_.depth == 2 + len(got)  # 1 and 2 are in flight still
        spool.ack([1, 2] + seqs(got))
        new = spool.append(sample(0)).seq
        assert new == 40_001
    with Spool(db) as spool:
        assert seqs(spool.take(10)) == [new]


def test_failing_commits_keep_readings_and_pause_publishing_only_past_the_reservation(
        db: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="agent.delivery.spool")
    with Spool(db, commit_interval=0.05, seq_block=10) as spool:
        works = Store.write

        def disk_full(self: Store, *args: Any) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        # A full disk fails both files: the database and the seq file beside it.
        monkeypatch.setattr(Store, "write", disk_full)
        seq_works = SeqFile.write

        def no_space(self: SeqFile, limit: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(SeqFile, "write", no_space)
        for i in range(30):
            spool.append(sample(i))
        assert seqs(spool.take(100)) == list(range(1, 11))  # reserved at open
        time.sleep(0.3)
        assert spool.take(100) == []  # 11 on: not reserved durably, so not published
        assert spool.depth == 30
        monkeypatch.setattr(Store, "write", works)
        monkeypatch.setattr(SeqFile, "write", seq_works)
        deadline = time.monotonic() + 5
        got: List[Reading] = []
        while len(got) < 20:
            assert time.monotonic() < deadline
            got += spool.take(100)
            time.sleep(0.01)
        assert seqs(got) == list(range(11, 31))
    messages = [(r.levelno, r.getMessage()) for r in spool_records(caplog)]
    assert len([m for lv, m in messages if lv == logging.WARNING and "commit failed" in m]) == 1
    assert len([m for lv, m in messages if lv == logging.ERROR and "publishing paused at seq 11" in m]) == 1
    assert any("commits work again" in m for _, m in messages)
    with Spool(db) as spool:  # and nothing was lost
        assert seqs(spool.take(100)) == list(range(1, 31))


# -- commits -----------------------------------------------------------------------------------------

def test_at_most_one_commit_per_interval_under_a_burst(db: Path) -> None:
    with Spool(db, commit_interval=0.2) as spool:
        before = spool.stats().commits
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 1.2:
            spool.append(sample(i))
            i += 1
            if i % 50 == 0:
                spool.ack(seqs(spool.take(30)))
                time.sleep(0.001)
        elapsed = time.monotonic() - started
        commits = spool.stats().commits - before
        assert i > 1000
        assert 3 <= commits <= elapsed / 0.2 + 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's count of a thread's wake-ups is Linux's")
def test_idle_spool_neither_commits_nor_wakes(db: Path) -> None:
    spool, committer = _open_watched(db, commit_interval=0.05)
    with spool:
        spool.append(sample(0))
        assert _wait_for(lambda: spool.stats().commits == 2)  # the reservation at open, then the reading
        stats, wakeups = spool.stats().commits, _settled_wakeups(committer)  # the committer is back asleep
        time.sleep(0.5)
        assert (spool.stats().commits, _committer_wakeups(committer)) == (stats, wakeups)


def test_readings_acknowledged_before_their_commit_are_never_written(db: Path) -> None:
    with Spool(db, commit_interval=0.3) as spool:
        before = spool.stats().commits
        for i in range(20):
            spool.append(sample(i))
            spool.ack(seqs(spool.take(1)))
            time.sleep(0.01)
        time.sleep(0.5)
        assert spool.stats().commits == before
        spool.append(sample(20))  # but one that is not acknowledged is committed within the interval
        time.sleep(0.6)
        assert spool.stats().commits == before + 1


def test_commit_interval_zero_commits_at_once(db: Path) -> None:
    with Spool(db, commit_interval=0) as spool:
        before = spool.stats().commits
        spool.append(sample(0))
        deadline = time.monotonic() + 5
        while spool.stats().commits == before:
            assert time.monotonic() < deadline
            time.sleep(0.005)


# -- the model ---------------------------------------------------------------------------------------

class Model:
    """What the spool must do, with none of its machinery: dicts and sorted lists."""

    def __init__(self, max_bytes: int, max_age: float) -> None:
        self.max_bytes, self.max_age = max_bytes, max_age
        self.pending: Dict[int, Sample] = {}
        self.in_flight: Set[int] = set()
        self.next_seq = 1
        self.dropped = {FULL: 0, AGE: 0}

    def unsent(self) -> List[int]:
        return sorted(set(self.pending) - self.in_flight)

    def enforce(self, now: float) -> None:
        for seq in self.unsent():
            ts = self.pending[seq].ts
            if not 1_500_000_000 <= ts < now - self.max_age:
                break
            del self.pending[seq]
            self.dropped[AGE] += 1
        for seq in self.unsent():
            if sum(size_of(s) for s in self.pending.values()) <= self.max_bytes:
                break
            del self.pending[seq]
            self.dropped[FULL] += 1

    def append(self, s: Sample, now: float) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.pending[seq] = s
        self.enforce(now)
        return seq

    def take(self, count: int, now: float) -> List[int]:
        self.enforce(now)
        out = self.unsent()[:count]
        self.in_flight.update(out)
        return out

    def ack(self, acked: List[int]) -> None:
        for seq in acked:
            self.pending.pop(seq, None)
            self.in_flight.discard(seq)

    def reopen(self, now: float) -> None:
        self.in_flight.clear()
        self.dropped = {FULL: 0, AGE: 0}  # counted since start
        self.enforce(now)


OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(0, 3), st.integers(-5, 5), st.integers(-150, 0)),
    st.tuples(st.just("take"), st.integers(0, 6)),
    st.tuples(st.just("release"), st.integers(0, 3)),
    st.tuples(st.just("ack"), st.integers(0, 3), st.integers(-2, 30)),
    st.tuples(st.just("advance"), st.integers(0, 60)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("reopen")),
), max_size=40)


@pytest.mark.parametrize("durable", [True, False])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, max_rows=st.integers(3, 12))
def test_spool_behaves_like_the_model(durable: bool, ops: List[Tuple[Any, ...]], max_rows: int) -> None:
    max_bytes = max_rows * size_of(sample(0)) + 7
    clock = [NOW]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spool.db" if durable else None

        def open_spool() -> Spool:
            return Spool(path, max_bytes=max_bytes, max_age=100, commit_interval=3600, clock=lambda: clock[0],
                         seq_block=1000)

        spool = open_spool()
        model = Model(max_bytes, 100)
        out: Dict[int, Reading] = {}
        try:
            for op in ops:
                kind = op[0]
                if kind == "append":
                    s = Sample("s%d" % op[1], op[2], "u", clock[0] + op[3])
                    assert spool.append(s).seq == model.append(s, clock[0])
                elif kind == "take":
                    got = spool.take(op[1])
                    assert seqs(got) == model.take(op[1], clock[0])
                    for r in got:
                        assert r == Reading.numbered(r.seq, model.pending[r.seq])
                        out[r.seq] = r
                elif kind == "release":
                    back = [out[s] for s in sorted(model.in_flight) if s % 4 == op[1]]
                    spool.release(back)
                    model.in_flight.difference_update(r.seq for r in back)
                elif kind == "ack":
                    chosen = [s for s in sorted(model.in_flight) if s % 4 != op[1]]
                    if op[2] > 0:
                        chosen.append(op[2])  # any seq: pending or not, taken or not
                    spool.ack(chosen)
                    model.ack(chosen)
                elif kind == "advance":
                    clock[0] += op[1]
                elif kind == "commit":
                    spool.commit()
                elif kind == "reopen" and durable:
                    spool.close()
                    spool = open_spool()
                    model.reopen(clock[0])
                st_ = spool.stats()
                assert (st_.depth, st_.in_flight) == (len(model.pending), len(model.in_flight))
                assert st_.bytes == sum(size_of(s) for s in model.pending.values())
                assert (st_.dropped_full, st_.dropped_age) == (model.dropped[FULL], model.dropped[AGE])
            # Whatever happened, the rest comes out in order and with the right content.
            spool.release([out[s] for s in sorted(model.in_flight)])
            model.in_flight.clear()
            rest = spool.take(10_000)
            assert seqs(rest) == model.take(10_000, clock[0])
            assert rest == [Reading.numbered(r.seq, model.pending[r.seq]) for r in rest]
        finally:
            spool.close()


# -- threads ------------------------------------------------------------------------------------------

def test_many_threads_every_seq_acked_exactly_once(db: Path) -> None:
    writers, per_writer = 4, 1500
    total = writers * per_writer
    spool = Spool(db, commit_interval=0.01)
    acked: collections.Counter[int] = collections.Counter()
    to_ack: "queue.Queue[Optional[List[int]]]" = queue.Queue()
    errors: List[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported by the test, not lost in a thread
                errors.append(exc)
        return run

    def writer(k: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(per_writer):
                r = spool.append(Sample("w%d" % k, i, None, NOW))
                assert r.sensor == "w%d" % k
        return run

    def network() -> None:  # the MQTT thread: acks
        while True:
            batch = to_ack.get()
            if batch is None:
                return
            spool.ack(batch)
            acked.update(batch)

    def uplink() -> None:
        rng = random.Random(2)
        deadline = time.monotonic() + 30
        sent = 0
        while sent < total and time.monotonic() < deadline:
            batch = spool.take(rng.randint(1, 20))
            if not batch:
                time.sleep(0.0005)
            elif rng.random() < 0.1:
                spool.release(batch)  # publish failed: back to the front
            else:
                sent += len(batch)
                to_ack.put([r.seq for r in batch])
        to_ack.put(None)

    threads = [threading.Thread(target=guarded(writer(k))) for k in range(writers)]
    threads += [threading.Thread(target=guarded(network)), threading.Thread(target=guarded(uplink))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(acked) == list(range(1, total + 1))
    assert set(acked.values()) == {1}
    assert spool.wait_empty(1) and spool.depth == 0 and spool.in_flight == 0
    spool.close()
    with Spool(db) as again:  # the acks were committed
        assert again.depth == 0


def test_commit_overdue_grows_only_while_the_writer_is_stuck(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool.db", commit_interval=0.05)
    works = Store.write
    stuck = threading.Event()
    unstuck = threading.Event()

    def hung_fsync(self: Store, *args: Any) -> None:
        stuck.set()
        unstuck.wait(30)
        works(self, *args)

    try:
        spool.append(Sample("s", 1.0, None, time.time()))
        time.sleep(0.3)
        assert spool.commit_overdue() == 0.0  # the committer wrote it in time
        monkeypatch.setattr(Store, "write", hung_fsync)  # the writer stuck (a hung fsync, say)
        spool.append(Sample("s", 2.0, None, time.time()))
        assert stuck.wait(10)
        time.sleep(0.4)
        assert spool.commit_overdue() > 0.2
    finally:
        unstuck.set()
        spool.close()


# -- the committer's wake-ups ------------------------------------------------------------------

def _committers() -> Set[int]:
    return {t.native_id for t in threading.enumerate() if t.name == "spool-commit" and t.native_id is not None}


def _open_watched(db: Path, **options: Any) -> Tuple[Spool, int]:
    """A spool and its committer thread's id (the thread named spool-commit that it started)."""
    before = _committers()
    spool = Spool(db, **options)
    new = _committers() - before
    assert len(new) == 1
    return spool, new.pop()


def _committer_wakeups(tid: int) -> int:
    """The committer thread's real wake-ups: the kernel's count of the times it blocked."""
    with open("/proc/self/task/%d/status" % tid) as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def _settled_wakeups(tid: int) -> int:
    """The committer's count once it stopped moving (the thread back asleep after what it was doing)."""
    last = _committer_wakeups(tid)
    for _ in range(50):
        time.sleep(0.1)
        now = _committer_wakeups(tid)
        if now == last:
            return now
        last = now
    raise AssertionError("the committer never went back to sleep")


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a kernel timer (timerfd) and /proc are Linux's")
def test_a_reading_acknowledged_before_its_commit_costs_the_committer_no_wake_up(db: Path) -> None:
    spool, committer = _open_watched(db, commit_interval=0.2)
    with spool:
        time.sleep(0.2)  # the committer thread has started and is asleep
        wakeups, commits = _committer_wakeups(committer), spool.stats().commits
        for i in range(5):
            spool.append(sample(i))
            spool.ack(seqs(spool.take(1)))
            time.sleep(0.3)  # past each reading's commit deadline
        assert (_committer_wakeups(committer), spool.stats().commits) == (wakeups, commits)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's count of a thread's wake-ups is Linux's")
def test_the_committer_wakes_only_to_commit(db: Path) -> None:
    # The kernel counts every time the committer blocks, the commit's own fsync waits too; so the
    # count is read where no commit can be under way: before the first reading's deadline, and
    # once the commit is done. Between those, nothing but the commit may wake it.
    interval = 1.0
    spool, committer = _open_watched(db, commit_interval=interval)
    with spool:
        assert _wait_for(lambda: spool.stats().commits == 1)  # the reservation at open
        time.sleep(0.2)  # the committer thread has started and is asleep
        for round_ in range(3):
            wakeups, commits = _committer_wakeups(committer), spool.stats().commits
            appended = time.monotonic()
            # Several appends within one interval: the first schedules the commit, the rest ride on it.
            for i in range(4):
                spool.append(sample(10 * round_ + i))
                time.sleep(0.05)
            time.sleep(max(0.0, appended + 0.7 * interval - time.monotonic()))
            before_due = _committer_wakeups(committer)
            if time.monotonic() < appended + interval:  # read before the deadline (a loaded machine may not)
                assert before_due == wakeups, "woken before the commit was due"

            def committed(n: int = commits + 1) -> bool:
                return spool.stats().commits == n

            assert _wait_for(committed)
            after = _settled_wakeups(committer)  # the commit is over: the committer is asleep again
            time.sleep(interval + 0.3)  # nothing more is due: no more wake-ups, no more commits
            assert (_committer_wakeups(committer), spool.stats().commits) == (after, commits + 1)


def test_a_commit_is_still_due_when_only_some_readings_were_acknowledged(db: Path) -> None:
    with Spool(db, commit_interval=0.2) as spool:
        spool.append(sample(0))
        spool.append(sample(1))
        taken = spool.take(2)
        spool.ack([taken[0].seq])  # the other one still needs its commit in time
        commits = spool.stats().commits
        assert _wait_for(lambda: spool.stats().commits == commits + 1, timeout=2.0)
    with Spool(db) as again:
        assert [r.seq for r in again.take(5)] == [taken[1].seq]


@pytest.mark.parametrize("kernel_timer", [True, False], ids=["timerfd", "condition"])
def test_an_alarm_goes_off_at_its_latest_deadline_and_not_when_cleared(monkeypatch, kernel_timer: bool) -> None:
    from agent import waker as alarm_module

    if not kernel_timer:
        monkeypatch.setattr(alarm_module, "_timerfd", lambda: None)
    elif not sys.platform.startswith("linux"):
        pytest.skip("a kernel timer (timerfd) is Linux's")
    alarm = alarm_module.Waker()
    assert alarm.kernel_timer == kernel_timer
    woke: "queue.Queue[float]" = queue.Queue()

    def waiter() -> None:
        for _ in range(2):
            alarm.wait()
            woke.put(time.monotonic())

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        alarm.set(start + 0.2)
        alarm.set(None)  # cleared: nothing at 0.2 s
        alarm.set(start + 0.5)
        went_off = woke.get(timeout=5)
        assert went_off - start >= 0.45
        alarm.ring()  # now, with no deadline set
        assert woke.get(timeout=5) - went_off < 0.2
    finally:
        thread.join(5)
        alarm.close()
