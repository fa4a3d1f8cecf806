"""`edison-agent watch`: the consumer's rule on the fleet's messages, a 20-agent run with a crash and a
broker restart counted exactly, and a live view that redraws in place and leaves on Ctrl-C."""

from __future__ import annotations

import collections
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Counter, Dict, Iterator, List, Set, Tuple

import pytest
import yaml

from agent.tools.watch.fleet import Fleet
from conftest import ROOT, AgentProcess, Broker, Certs, Received, Recorder, agent_config

# -- the rule, message by message (no broker) ------------------------------------------------


def status(seq_start: int) -> bytes:
    return json.dumps({"status": "online", "seq_start": seq_start, "version": "0.1.0"}).encode()


def telemetry(*seqs: int) -> bytes:
    return json.dumps({"device": "b1", "readings": [
        {"sensor": "t", "value": 1.5, "unit": "degC", "ts": 1764201234.0 + s, "seq": s} for s in seqs]}).encode()


def board(fleet: Fleet) -> Dict[str, Any]:
    (row,) = fleet.rows()
    return row


def test_a_reading_sent_twice_is_one_duplicate_and_the_brokers_own_redelivery_is_none():
    fleet = Fleet()
    fleet.message("edison/b1/status", status(1))
    fleet.message("edison/b1/telemetry", telemetry(1, 2, 3))
    fleet.message("edison/b1/telemetry", telemetry(3))
    # The broker sending us a copy again (DUP set): our session's retry, not the board's.
    fleet.message("edison/b1/telemetry", telemetry(2), redelivered=True)
    assert (board(fleet)["readings"], board(fleet)["duplicates"], board(fleet)["lost"]) == (3, 1, 0)


def test_a_gap_inside_a_run_is_loss_until_the_readings_arrive_late():
    fleet = Fleet()
    fleet.message("edison/b1/status", status(1))
    fleet.message("edison/b1/telemetry", telemetry(1, 2, 6))
    assert board(fleet)["lost"] == 3
    fleet.message("edison/b1/telemetry", telemetry(4))
    assert (board(fleet)["lost"], board(fleet)["duplicates"]) == (2, 0)


def test_the_jump_to_a_new_runs_seq_start_is_not_loss_and_the_old_runs_backlog_is_not_a_duplicate():
    fleet = Fleet()
    fleet.message("edison/b1/status", status(1))
    fleet.message("edison/b1/telemetry", telemetry(1, 2, 3))
    fleet.message("edison/b1/status", b"offline")
    fleet.message("edison/b1/status", status(10001))
    # The crashed run's backlog comes first, then the new run.
    fleet.message("edison/b1/telemetry", telemetry(4, 5, 10001, 10002))
    row = board(fleet)
    assert (row["lost"], row["duplicates"], row["readings"], row["runs"], row["online"]) == (0, 0, 7, 2, True)


def test_a_new_run_announced_while_watching_counts_its_first_readings_missing_as_lost():
    fleet = Fleet()
    fleet.message("edison/b1/status", status(10001))
    fleet.message("edison/b1/telemetry", telemetry(10003))
    assert board(fleet)["lost"] == 2


def test_what_came_before_the_watcher_started_is_not_loss():
    fleet = Fleet()
    # A retained status: the run began before we subscribed.
    fleet.message("edison/b1/status", status(1), retained=True)
    fleet.message("edison/b1/telemetry", telemetry(500, 501))
    assert (board(fleet)["lost"], board(fleet)["online"], board(fleet)["since"]) == (0, True, None)


def test_readings_the_watcher_itself_missed_are_not_the_boards_loss():
    fleet = Fleet()
    fleet.message("edison/b1/status", status(1))
    fleet.message("edison/b1/telemetry", telemetry(1, 2))
    fleet.lost_continuity()
    fleet.message("edison/b1/telemetry", telemetry(40, 42))
    assert board(fleet)["lost"] == 1


def test_the_health_document_gives_spool_reconnects_and_certificate_days():
    fleet = Fleet()
    health = {"time": 1.0, "connection": {"state": "connected", "since": 100.0, "reconnects": 3},
              "spool": {"depth": 12}, "certificate": {"days_left": 29}, "version": "0.1.0"}
    fleet.message("edison/b1/status", status(1), retained=True)
    fleet.message("edison/b1/health", json.dumps(health).encode(), retained=True)
    row = board(fleet)
    assert (row["spool_depth"], row["reconnects"], row["cert_days_left"], row["since"]) == (12, 3, 29, 100.0)


def test_readings_per_second_count_the_time_watched_not_a_fixed_window():
    clock = [100.0]
    fleet = Fleet(monotonic=lambda: clock[0])
    fleet.message("edison/b1/status", status(1))
    for t, seqs in ((101.0, (1, 2, 3)), (102.0, (4, 5, 6))):
        clock[0] = t
        fleet.message("edison/b1/telemetry", telemetry(*seqs))
    assert board(fleet)["readings_per_s"] == 3.0
    clock[0] = 200.0
    assert board(fleet)["readings_per_s"] == 0.0


def test_a_board_found_offline_is_offline_since_at_most_its_last_health_document():
    fleet = Fleet()
    fleet.message("edison/b1/health", json.dumps({"time": 50.0, "connection": {"state": "connected"}}).encode(),
                  retained=True)
    fleet.message("edison/b1/status", b"offline", retained=True)
    row = board(fleet)
    assert (row["online"], row["since"], row["since_exact"]) == (False, 50.0, False)


# -- against a real mosquitto ------------------------------------------------------------------


def watch_config(path: Path, certs: Certs, port: int) -> Path:
    """The agent's config format, only its mqtt section, with an operator's certificate: no board's key."""
    path.write_text(yaml.safe_dump({"mqtt": {"host": "127.0.0.1", "port": port, "tls": {
        "ca_file": str(certs.ca), "cert_file": str(certs.monitor_cert), "key_file": str(certs.monitor_key)}}}))
    return path


def start_watch(config: Path, *args: str, **popen: Any) -> "subprocess.Popen[bytes]":
    return subprocess.Popen([sys.executable, "-m", "agent", "watch", "-c", str(config), *args], cwd=str(ROOT),
                            **popen)


def delivering_since(recorder: Recorder, moment: float) -> Set[str]:
    """The boards whose telemetry arrived after `moment`."""
    return {m.topic.split("/")[1] for m in recorder.received() if m.at > moment}


def deliveries(received: List[Received]) -> Tuple[Dict[str, Set[int]], Counter[str]]:
    """The truth, independent of watch: each board's distinct seqs, and the readings it sent again."""
    seen: Dict[str, Set[int]] = collections.defaultdict(set)
    repeats: Counter[str] = collections.Counter()
    for m in received:
        device = m.topic.split("/")[1]
        for reading in json.loads(m.payload)["readings"]:
            if reading["seq"] in seen[device]:
                # The broker's own retry of a copy we had (DUP) is transport, not the board sending twice.
                if not m.dup:
                    repeats[device] += 1
            else:
                seen[device].add(reading["seq"])
    return seen, repeats


FLEET = 20


def fleet_agent(certs: Certs, port: int, workdir: Path, n: int, **extra: Any) -> Path:
    cfg = agent_config(certs, port, device={"id": "watch-%02d" % n}, **extra)
    cfg["mqtt"]["reconnect"] = {"min_delay": 0.2, "max_delay": 1.0, "spread": 1.0}
    cfg["sensors"][0]["interval"] = 0.5
    # Twenty processes stopping at once on a shared machine.
    cfg["shutdown_timeout"] = 30
    path = workdir / ("watch-%02d.yaml" % n)
    path.write_text(yaml.safe_dump(cfg))
    return path


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(0.2)


@pytest.fixture
def persistent_broker(tmp_path: Path, certs: Certs) -> Iterator[Broker]:
    b = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key, persistent=True)
    b.start()
    yield b
    b.stop()


def test_watch_once_json_reports_exactly_the_crash_and_the_broker_restart_over_20_agents(
        certs, persistent_broker, tmp_path):
    broker = persistent_broker
    watcher = start_watch(watch_config(tmp_path / "watch.yaml", certs, broker.port), "--once", "--json",
                          "--duration", "900", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    recorder = Recorder(broker, certs, "recorder", "edison/+/telemetry")
    agents: List[AgentProcess] = []
    try:
        time.sleep(1.0)
        # Board 0 drops readings older than a second while the broker is away: loss on purpose.
        configs = [fleet_agent(certs, broker.port, tmp_path, n, **({"spool": {"max_age": 1}} if n == 0 else {}))
                   for n in range(FLEET)]
        started = time.monotonic()
        agents = [AgentProcess(path) for path in configs]
        wait_until(lambda: len(delivering_since(recorder, started)) == FLEET, 120, "every board delivering")

        # A crash with duplicates on purpose: the broker paused long enough for board 1 to commit
        # what it has sent and not had acknowledged; board 1 killed; the broker then reads those
        # readings from the dead connection and passes them on, and board 1, started again on its
        # spool, sends them a second time.
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(4)
            agents[1].stop(signal.SIGKILL)
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        agents[1].close()
        restarted = time.monotonic()
        agents[1] = AgentProcess(configs[1])
        wait_until(lambda: "watch-01" in delivering_since(recorder, restarted + 2), 60, "board 1 back")

        # A broker restart (its persistence keeps the watcher's and the recorder's sessions).
        broker.stop()
        time.sleep(4)
        broker.start()
        back = time.monotonic()
        wait_until(lambda: len(delivering_since(recorder, back + 2)) == FLEET, 120, "every board back")

        # All at once, each signalled once (a second SIGTERM during the interpreter's exit would kill it).
        for agent in agents:
            agent.proc.send_signal(signal.SIGTERM)
        assert [agent.proc.wait(60) for agent in agents] == [0] * FLEET
        time.sleep(2.0)
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=30)
        assert watcher.returncode == 0, err.decode()
    finally:
        for agent in agents:
            agent.close()
        received = recorder.close()
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()

    seen, repeats = deliveries(received)
    rows = {row["device"]: row for row in json.loads(out)["boards"]}
    print("watch: lost, duplicates, readings:",
          {d: (r["lost"], r["duplicates"], r["readings"]) for d, r in rows.items()})
    assert set(rows) == {"watch-%02d" % n for n in range(FLEET)}
    # What board 0 itself counted as dropped (its health file, written at its stop).
    dropped = _dropped(configs[0])
    assert dropped > 0
    assert rows["watch-01"]["duplicates"] > 0
    for device, row in rows.items():
        expected_lost = dropped if device == "watch-00" else 0
        assert (device, row["lost"]) == (device, expected_lost)
        assert (device, row["duplicates"]) == (device, repeats[device])
        assert (device, row["readings"]) == (device, len(seen[device]))
        # The crash is a second run, its seq jump no loss; every board stopped cleanly at the end.
        assert (device, row["runs"]) == (device, 2 if device == "watch-01" else 1)
        assert row["online"] is False and row["cert_days_left"] in (729, 730)


def _dropped(config_path: Path) -> int:
    cfg = yaml.safe_load(config_path.read_text())
    return int(json.loads(Path(cfg["health"]["file"]).read_text())["readings"]["dropped_age"])


def test_the_live_view_redraws_in_place_and_exits_0_on_ctrl_c(certs, broker, run_agent, tmp_path):
    agent = run_agent(agent_config(certs, broker.port))
    agent.wait_for("connected to")
    primary, secondary = pty.openpty()
    env = dict(os.environ, COLUMNS="160", LINES="30")
    watcher = start_watch(watch_config(tmp_path / "watch.yaml", certs, broker.port), "--interval", "0.2",
                          stdin=secondary, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    screen = b""
    try:
        deadline = time.monotonic() + 30
        while screen.count(b"\x1b[H") < 5 or b"thunder10" not in screen:
            assert time.monotonic() < deadline, screen[-2000:]
            ready, _, _ = select.select([primary], [], [], 1.0)
            if ready:
                screen += os.read(primary, 65536)
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(15) == 0
        screen += _drain(primary)
    finally:
        if watcher.poll() is None:
            watcher.kill()
        os.close(primary)
    frames = screen.split(b"\x1b[H")[1:]
    # Each frame overwrites the last line by line and clears only what is left below: no full clear.
    assert b"\x1b[2J" not in screen
    assert all(frame.count(b"\x1b[K") >= 3 and b"\x1b[J" in frame for frame in frames[:-1])
    assert b"online" in frames[-2] and b"thunder10" in frames[-2]
    # The terminal is given back: cursor shown, alternate screen left.
    assert screen.endswith(b"\x1b[?25h\x1b[?1049l")
    assert agent.stop() == 0


def _drain(fd: int) -> bytes:
    data = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            return data
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk
