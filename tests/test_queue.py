"""The spool's queue in memory, by itself: seq order, in flight, the bounds, what a commit writes.

Through the queue's public interface only; with a real SQLite store where a commit is involved.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

from agent.delivery.changes import Changes
from agent.delivery.drops import Drops
from agent.delivery.queue import Queue
from agent.delivery.seqs import Seqs
from agent.delivery.store import ROW_OVERHEAD, Store, encode
from agent.sampling.reading import Reading, Sample

NOW = float(int(time.time()))
ROOMY = 1 << 20


def sample(i: int, ts: Optional[float] = None) -> Sample:
    return Sample("t", 10_000 + i, "C", NOW + i if ts is None else ts)


def size(i: int) -> int:
    return len(encode(sample(i))) + ROW_OVERHEAD


def seqs(readings: List[Reading]) -> List[int]:
    return [r.seq for r in readings]


def in_memory(max_bytes: int = ROOMY, max_age: float = 3600.0, first: int = 1) -> Queue:
    return Queue(Seqs(first, 1000, reserved=False), Drops(max_bytes, max_age), Changes(1.0, None))


def test_seqs_count_up_from_the_first_and_readings_leave_in_that_order() -> None:
    q = in_memory(first=500)
    assert seqs([q.append(sample(i), NOW) for i in range(5)]) == [500, 501, 502, 503, 504]
    assert q.next_seq() == 505
    assert seqs(q.take(2, NOW)) == [500, 501]
    assert seqs(q.take(10, NOW)) == [502, 503, 504]
    assert q.take(10, NOW) == []
    assert (q.depth(), q.in_flight()) == (5, 5)


def test_released_readings_go_out_again_first_in_seq_order() -> None:
    q = in_memory()
    for i in range(6):
        q.append(sample(i), NOW)
    taken = q.take(4, NOW)
    q.release([taken[3], taken[1]])
    assert q.in_flight() == 2
    assert seqs(q.take(3, NOW)) == [2, 4, 5]
    assert q.release_in_flight() == 5
    assert seqs(q.take(10, NOW)) == [1, 2, 3, 4, 5, 6]


def test_an_acknowledged_reading_leaves_whether_or_not_it_was_handed_out() -> None:
    q = in_memory()
    for i in range(4):
        q.append(sample(i), NOW)
    q.take(2, NOW)
    q.leave([1, 3, 99], None)  # in flight, never handed out, never existed
    assert (q.depth(), q.in_flight()) == (2, 1)
    assert seqs(q.take(10, NOW)) == [4]
    assert q.counts().dropped_refused == 0


def test_a_refused_reading_leaves_counted_as_dropped() -> None:
    q = in_memory()
    q.append(sample(0), NOW)
    q.leave(seqs(q.take(1, NOW)), "refused")
    c = q.counts()
    assert (c.depth, c.dropped_refused) == (0, 1)
    assert c.dropped == 1


def test_over_max_bytes_the_oldest_not_in_flight_go() -> None:
    q = in_memory(max_bytes=3 * size(0))
    assert all(size(i) == size(0) for i in range(10))
    for i in range(2):
        q.append(sample(i), NOW)
    q.take(1, NOW)  # seq 1 is in flight: never dropped
    for i in range(2, 6):
        q.append(sample(i), NOW)
    c = q.counts()
    assert (c.depth, c.bytes, c.dropped_full) == (3, 3 * size(0), 3)
    assert seqs(q.take(10, NOW)) == [5, 6]


def test_readings_older_than_max_age_go_by_their_sampling_time_unless_the_clock_was_unset() -> None:
    q = in_memory(max_age=100)
    q.append(sample(0, ts=NOW - 150), NOW)
    q.append(sample(1, ts=1000.0), NOW)  # before NTP set the clock: its age is unknown
    q.append(sample(2, ts=NOW - 50), NOW)
    assert seqs(q.take(10, NOW + 60)) == [2, 3]  # 3 is 110 s old by the time it is taken, but in flight
    assert q.counts().dropped_age == 1


def test_wait_empty_returns_when_the_last_reading_leaves() -> None:
    q = in_memory()
    q.append(sample(0), NOW)
    assert not q.wait_empty(0.05)
    threading.Timer(0.05, q.leave, args=([1], None)).start()
    assert q.wait_empty(10)


def test_a_closed_queue_takes_no_more_readings() -> None:
    q = in_memory()
    assert q.close()
    assert not q.close()
    with pytest.raises(RuntimeError):
        q.append(sample(0), NOW)


# -- with a store ----------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "q.db", 16)
    yield s
    s.close()


def durable(store: Store, block: int = 10) -> Queue:
    return Queue(Seqs(1, block, reserved=True), Drops(ROOMY, 3600.0), Changes(3600.0, None), store)


def test_only_seqs_under_a_durable_reservation_are_handed_out(store: Store) -> None:
    q = durable(store, block=10)
    for i in range(5):
        q.append(sample(i), NOW)
    assert q.take(10, NOW) == []  # nothing reserved yet
    commit = q.begin_commit(final=False)
    assert commit is not None and commit.limit == 16  # the next seq plus a block
    store.write(commit.rows, commit.deletes, commit.limit)
    q.end_commit(commit, ok=True, reserved=False)
    assert seqs(q.take(10, NOW)) == [1, 2, 3, 4, 5]


def test_a_commit_writes_what_is_pending_and_deletes_what_left_after_it_was_written(store: Store) -> None:
    q = durable(store)
    for i in range(4):
        q.append(sample(i), NOW)
    q.leave([2], None)  # acknowledged before any commit: never written
    commit = q.begin_commit(final=False)
    assert commit is not None and [seq for seq, _ in commit.rows] == [1, 3, 4]
    store.write(commit.rows, commit.deletes, commit.limit)
    q.end_commit(commit, ok=True, reserved=False)
    assert q.begin_commit(final=False) is None  # nothing more to write
    q.leave(seqs(q.take(1, NOW)), None)  # seq 1, stored: its row goes at the next commit
    commit = q.begin_commit(final=True)
    assert commit is not None and commit.rows == [] and commit.deletes == [1] and commit.limit == 5
    store.write(commit.rows, commit.deletes, commit.limit)
    q.end_commit(commit, ok=True, reserved=False)
    assert [seq for seq, _ in store.load(0, 100, 100)] == [3, 4]
    assert q.counts().commits == 2


def test_a_failed_commit_keeps_everything_for_the_next(store: Store) -> None:
    q = durable(store)
    q.append(sample(0), NOW)
    first = q.begin_commit(final=False)
    assert first is not None
    q.end_commit(first, ok=False, reserved=False)
    assert q.take(1, NOW) == []  # the reservation was not written: still nothing handed out
    again = q.begin_commit(final=False)
    assert again is not None and again.rows == first.rows and again.limit == first.limit


def test_a_stored_backlog_is_read_back_in_seq_order_before_new_readings(store: Store) -> None:
    rows = [(seq, encode(sample(seq))) for seq in range(1, 601)]
    store.write(rows, [], 1000)
    q = Queue(Seqs(1000, 10, reserved=True), Drops(ROOMY, 3600.0), Changes(3600.0, None, stored_hi=600), store,
              (600, sum(len(b) + ROW_OVERHEAD for _, b in rows)))
    q.append(sample(1000), NOW)
    q.leave([300], None)  # never handed out, only in the file: it leaves all the same
    assert seqs(q.take(10_000, NOW)) == [s for s in range(1, 601) if s != 300]
    commit = q.begin_commit(final=False)  # the new reading waits for its seq's reservation
    assert commit is not None and commit.deletes == [300]
    store.write(commit.rows, commit.deletes, commit.limit)
    q.end_commit(commit, ok=True, reserved=False)
    assert seqs(q.take(10_000, NOW)) == [1000]
    assert q.depth() == 600


def test_newer_readings_never_overtake_a_stored_backlog_that_cannot_be_read(store: Store) -> None:
    rows = [(seq, encode(sample(seq))) for seq in range(1, 11)]
    store.write(rows, [], 1000)
    q = Queue(Seqs(1000, 10, reserved=False), Drops(ROOMY, 3600.0), Changes(3600.0, None, stored_hi=10), store,
              (10, sum(len(b) + ROW_OVERHEAD for _, b in rows)))
    assert store.conn is not None
    store.conn.execute("DROP TABLE readings")  # every read of the backlog fails from now on
    q.append(sample(1000), NOW)
    assert q.take(10, NOW) == []  # not seq 1000 ahead of 1-10: seq order holds even then
    assert q.depth() == 11
