"""The agent's files taken away under it: made immutable, removed, replaced; and the modes of the
files it makes. Real files, a real agent process, a real mosquitto."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.atomic_file import replace_file
from agent.config import overlay
from agent.delivery import queue as queue_module
from agent.delivery.spool import Spool, clock_floor
from agent.delivery.store import ROW_OVERHEAD, Store, encode
from agent.sampling.reading import Reading, Sample
from agent.tools.pki import authority as pki
from conftest import Broker, Subscriber, agent_config


def sample(i: int) -> Sample:
    return Sample("t", i, "C", time.time())


def seqs(readings: List[Reading]) -> List[int]:
    return [r.seq for r in readings]


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[List[Path]]:
    """Files to make immutable; the flag is taken off again whatever happens."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode:
        pytest.skip("chattr +i does not work here (not root, or a filesystem without the flag, like tmpfs)")
    _chattr("-i", probe)
    made: List[Path] = []
    yield made
    for path in made:
        if path.exists():
            _chattr("-i", path)


def test_spool_files_made_immutable_cost_no_reading_and_never_kill_the_agent(certs, tmp_path, run_agent, immutable):
    # On the agent before this was fixed: SIGBUS (exit 135) with no log line, at the first commit
    # after `chattr +i spool.db-shm` (SQLite's WAL index is a shared memory map of that file).
    broker = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key)  # not started: readings pile up
    cfg = agent_config(certs, broker.port)
    agent = run_agent(cfg)
    state = Path(cfg["state_dir"])
    agent.wait_for(r"connecting to")
    deadline = time.monotonic() + 15
    while not (state / "spool.db-wal").exists():
        assert time.monotonic() < deadline, agent.output
        time.sleep(0.1)
    files = sorted(p for p in state.iterdir() if p.name.startswith("spool.db"))
    assert not any(p.name.endswith("-shm") for p in files), "the WAL index must not be a mapped file"
    immutable.extend(files)
    _chattr("+i", *files)
    mark = len(agent.lines)
    try:
        agent.wait_for(r"spool commit failed .*readings stay in memory", after=mark)
    except AssertionError:
        raise AssertionError("no warning; the agent's exit status: %s" % agent.proc.poll()) from None
    time.sleep(3)  # several more commits, each failing
    assert agent.proc.poll() is None, agent.output
    _chattr("-i", *files)
    agent.wait_for(r"spool commits work again", after=mark)
    broker.start()
    try:
        watcher = Subscriber(broker, certs)
        try:
            # The backlog (from before, through and after the failure; at 5 readings/s well over
            # 30) arrives first, in seq order, without a gap.
            message = watcher.telemetry(timeout=30)["readings"]
            first = message[0]["seq"]
            seen = {r["seq"] for r in message}
            deadline = time.monotonic() + 60
            while not set(range(first, first + 30)) <= seen:
                assert time.monotonic() < deadline, "missing seqs: %s" % sorted(set(range(first, first + 30)) - seen)
                seen.update(r["seq"] for r in watcher.telemetry(timeout=30)["readings"])
        finally:
            watcher.close()
        assert agent.stop() == 0
    finally:
        broker.stop()


def test_spool_file_removed_while_running_is_made_again_with_what_is_not_acknowledged(tmp_path: Path) -> None:
    # Before: the readings went on into the removed file and were gone at the next start, which began at seq 1.
    db = tmp_path / "state" / "spool.db"
    with Spool(db, commit_interval=3600) as spool:
        first = seqs([spool.append(sample(i)) for i in range(100)])
        spool.commit()
        for path in db.parent.iterdir():
            path.unlink()  # spool.db, its WAL and the seq file
        later = seqs([spool.append(sample(i)) for i in range(100, 150)])
        spool.commit()
        assert db.exists()
    with Spool(db) as spool:
        assert seqs(spool.take(1000)) == first + later
        assert spool.append(sample(0)).seq > later[-1]


def test_spool_directory_replaced_by_a_file_then_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    db = state / "spool.db"
    with Spool(db, commit_interval=3600) as spool:
        first = seqs([spool.append(sample(i)) for i in range(10)])
        spool.commit()
        os.rename(str(state), str(tmp_path / "elsewhere"))
        state.write_text("not a directory")
        during = seqs([spool.append(sample(i)) for i in range(10, 20)])
        spool.commit()  # cannot make a new file: still writes to the old one, and says so
        assert [r for r in caplog.records if "cannot be made there" in r.getMessage()]
        # Sampling and delivery go on.
        taken = spool.take(5)
        spool.ack(seqs(taken))
        state.unlink()  # the disk comes back
        after = seqs([spool.append(sample(i)) for i in range(20, 25)])
        spool.commit()
        assert db.exists()
    with Spool(db) as spool:
        assert seqs(spool.take(1000)) == (first + during + after)[5:]


# -- seq only grows, whatever happens to the state files -----------------------------------------

def _last_seq(db: Path, count: int, clock: Optional[Callable[[], float]] = None) -> int:
    with Spool(db, clock=clock or time.time) as spool:
        return max(spool.append(sample(i)).seq for i in range(count))


def test_seq_grows_across_a_start_with_every_state_file_gone(tmp_path: Path) -> None:
    # Before: the next run started again at seq 1, and a consumer de-duplicating by (device, seq) threw it away.
    db = tmp_path / "state" / "spool.db"
    last = _last_seq(db, 20)
    shutil.rmtree(str(db.parent))
    assert _last_seq(db, 1) > last


def test_seq_grows_across_a_start_with_both_state_files_corrupt(tmp_path: Path) -> None:
    db = tmp_path / "state" / "spool.db"
    last = _last_seq(db, 20)
    db.write_bytes(b"\xa5" * 8192)
    db.with_name("spool.db.seq").write_bytes(b"garbage\n")
    assert _last_seq(db, 1) > last


def test_a_clock_at_1970_does_not_take_seq_back(tmp_path: Path) -> None:
    # The Edison has no battery-backed clock: before NTP it may say 1970. The state files decide then.
    db = tmp_path / "state" / "spool.db"
    last = _last_seq(db, 20)
    assert _last_seq(db, 1, clock=lambda: 0.0) > last
    assert _last_seq(db, 1, clock=lambda: 86400.0) > last


def test_the_clock_floor_stays_an_exact_json_number_for_centuries() -> None:
    assert clock_floor(time.time()) < 2 ** 53 // 40  # far below 2**53, the largest integer a JSON double holds
    assert clock_floor(4102444800.0) < 2 ** 53 // 20  # 2100-01-01
    assert clock_floor(0.0) == clock_floor(float("nan")) == clock_floor(-5.0) == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.floats(min_value=0.5, max_value=3600.0), st.integers(min_value=0, max_value=300),
                          st.sampled_from(["kept", "removed", "corrupt", "seq file removed", "database removed"])),
                min_size=2, max_size=6))
def test_seq_strictly_grows_over_runs_whatever_happens_to_the_files(tmp_path: Path, runs) -> None:
    # A restart takes at least half a second; a run here appends at most 300 readings.
    db = tmp_path / ("state-%d" % len(list(tmp_path.iterdir()))) / "spool.db"
    now = [time.time()]
    used: List[int] = []
    for pause, count, fate in runs:
        now[0] += pause
        with Spool(db, clock=lambda: now[0]) as spool:
            used += [spool.append(sample(i)).seq for i in range(count)]
            spool.ack(seqs(spool.take(count)))
        if fate in ("removed", "database removed"):
            for path in db.parent.glob("spool.db*"):
                if fate == "removed" or not path.name.endswith(".seq"):
                    path.unlink()
        elif fate == "seq file removed":
            db.with_name("spool.db.seq").unlink()
        elif fate == "corrupt":
            for path in db.parent.glob("spool.db*"):
                path.write_bytes(b"\xa5" * 4096)
    assert used == sorted(set(used))


# -- modes and symlinks ----------------------------------------------------------------------------

@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for a test; restored after."""
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(mask: int) -> None:
        os.umask(mask)

    yield set_umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_the_state_directory_and_the_spool_files_are_the_agents_alone_whatever_the_umask(tmp_path, umask, mask):
    # Before, under umask 000: the directory 0777, spool.db and its WAL 0666 (0755 and 0644 under 022).
    umask(mask)
    state = tmp_path / "state"
    with Spool(state / "spool.db", commit_interval=3600) as spool:
        spool.append(sample(0))
        spool.commit()
        files = {p.name: _mode(p) for p in state.iterdir()}
        assert "spool.db-wal" in files
    assert _mode(state) == 0o700
    assert files == {name: 0o600 for name in files}
    overlay.save(tmp_path / "other" / "overrides.yaml", {"t": 5.0})
    assert (_mode(tmp_path / "other"), _mode(tmp_path / "other" / "overrides.yaml")) == (0o700, 0o600)


def test_a_spool_file_left_0644_by_an_older_agent_becomes_0600(tmp_path):
    db = tmp_path / "state" / "spool.db"
    Spool(db).close()
    db.chmod(0o644)
    Spool(db).close()
    assert _mode(db) == 0o600


def test_the_atomic_writer_never_follows_a_symlink_planted_in_a_shared_directory(tmp_path):
    # The health file lives in a directory others may write to. Before, the temporary file had a
    # fixed name (.health.json.tmp) and was opened without O_NOFOLLOW: a link planted there made
    # the agent overwrite the file it pointed at and chmod it 0644.
    secret = tmp_path / "secret"
    secret.write_text("root's own\n")
    secret.chmod(0o600)
    shared = tmp_path / "run"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / ".health.json.tmp").symlink_to(secret)
    replace_file(shared / "health.json", b"{}\n", 0o644)
    assert (secret.read_text(), _mode(secret)) == ("root's own\n", 0o600)
    assert (shared / "health.json").read_bytes() == b"{}\n" and _mode(shared / "health.json") == 0o644
    # A link at the file's own name is replaced, not written through.
    (shared / "health.json").unlink()
    (shared / "health.json").symlink_to(secret)
    replace_file(shared / "health.json", b"{}\n", 0o644)
    assert (secret.read_text(), _mode(secret)) == ("root's own\n", 0o600)
    assert not (shared / "health.json").is_symlink()


@pytest.mark.parametrize("mask", [0o000, 0o277])
def test_pki_files_have_their_documented_modes_whatever_the_umask(tmp_path, umask, mask):
    # Before, under umask 0277: keys 0400 and certificates 0444 (only modes with group or other bits were set).
    ca = tmp_path / "pki"
    ca.mkdir(mode=0o700)
    umask(mask)
    pki.init_ca(ca)
    device = pki.issue_device(ca, "thunder10")
    assert (_mode(device.key_file), _mode(device.cert_file)) == (0o600, 0o644)
    assert (_mode(ca / "ca.key"), _mode(ca / "ca.crt")) == (0o600, 0o644)


def test_while_the_disk_fails_readings_in_memory_stay_within_the_memory_bound(tmp_path, monkeypatch, caplog):
    # Before: with every commit failing, memory held readings up to spool.max_bytes (64 MiB of
    # records, several times that in Python objects): a disk that stays broken ate the board's RAM.
    db = tmp_path / "state" / "spool.db"
    one = len(encode(sample(0))) + ROW_OVERHEAD
    monkeypatch.setattr(queue_module, "MEMORY_MAX_BYTES", 50 * one)
    with Spool(db, commit_interval=3600) as spool:
        works = Store.write

        def broken(self: Store, *args: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(Store, "write", broken)
        appended = [spool.append(sample(0)).seq for _ in range(2)]
        assert not spool.commit()  # the disk fails: from here on memory is the bound
        appended += [spool.append(sample(0)).seq for _ in range(500)]
        stats = spool.stats()
        assert stats.bytes <= 50 * one and stats.dropped_full == 502 - stats.depth
        assert [r for r in caplog.records if "holds %d bytes of readings in memory" % (50 * one) in r.getMessage()]
        monkeypatch.setattr(Store, "write", works)
        assert spool.commit()  # the disk is back
        kept = seqs(spool.take(1000))
        assert kept == appended[-len(kept):]  # the newest stay, in order
