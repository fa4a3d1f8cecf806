"""The agent's files taken away under it: made immutable, removed, replaced; and the modes of the
files it makes. Real files, a real agent process, a real mosquitto."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from agent.reading import Reading, Sample
from agent.spool import Spool
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
            seen = set()
            while 1 not in seen:  # the backlog from before, through the failure, arrives
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
