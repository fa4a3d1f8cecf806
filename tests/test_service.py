"""The daemon as systemd runs it: readiness, watchdog, status, stop, and reload with SIGHUP."""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from agent.service.health import Health
from agent.tools.pki import authority as pki
from conftest import ROOT, Subscriber, agent_config


class NotifySocket:
    """What systemd listens on: a datagram socket, with every message kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: List[Tuple[float, str]] = []

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def with_key(self, key: str) -> List[Tuple[float, str]]:
        return [(t, m) for t, m in self.messages if any(line.startswith(key) for line in m.splitlines())]

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, message in self.messages:
                if text in message:
                    return message
            self.collect(0.2)
        raise AssertionError("no notify message with %r; got %r" % (text, [m for _, m in self.messages]))

    def close(self) -> None:
        self.sock.close()


def test_ready_watchdog_status_and_stopping_reach_systemd(certs, broker, run_agent, tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    try:
        agent = run_agent(agent_config(certs, broker.port),
                          env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"})
        ready = notify.wait_for("READY=1")
        assert "STATUS=" in ready
        notify.wait_for("STATUS=connected since")
        notify.collect(4)
        pings = [t for t, _ in notify.with_key("WATCHDOG=1")]
        # Faster than WATCHDOG_USEC / 2, as systemd asks.
        assert len(pings) >= 4 and max(b - a for a, b in zip(pings, pings[1:])) < 1.0 + 0.3

        broker.stop()
        down = notify.wait_for("STATUS=not connected since")
        assert "sent" in down and "spool" in down
        # The broker being away is not the agent being stuck: the pings go on.
        mark = time.monotonic()
        notify.collect(2.5)
        assert [t for t, _ in notify.with_key("WATCHDOG=1") if t > mark]

        agent.proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1")
        assert agent.proc.wait(15) == 0
    finally:
        notify.close()


class _Session:
    connected = True
    connected_since: Optional[float] = 0.0
    disconnected_since: Optional[float] = None
    problem: Optional[str] = None

    def __init__(self, last_alive: float) -> None:
        self.last_alive = last_alive


class _Spool:
    depth = 3
    dropped = 0
    overdue = 0.0

    def commit_overdue(self) -> float:
        return self.overdue


class _Uplink:
    delivered = 42


class _Notifier:
    def __init__(self) -> None:
        self.pings = 0
        self.statuses: List[str] = []

    def watchdog(self, status: Optional[str] = None) -> None:
        self.pings += 1
        if status is not None:
            self.statuses.append(status)

    def status(self, text: str) -> None:
        self.statuses.append(text)


def test_a_stuck_session_thread_withholds_the_watchdog_so_systemd_restarts_us(caplog):
    now = [1000.0]
    session, notifier = _Session(last_alive=999.0), _Notifier()
    health = Health(session, _Spool(), _Uplink(), notifier, monotonic=lambda: now[0])  # type: ignore[arg-type]
    health.tick()
    assert notifier.pings == 1
    now[0] += 60  # the session thread has not come round for a minute
    health.tick()
    health.tick()
    assert notifier.pings == 1
    assert caplog.text.count("not petting the watchdog: the MQTT session thread has not come round") == 1
    session.last_alive = now[0]
    health.tick()
    assert notifier.pings == 2
    assert notifier.statuses[-1].endswith("42 sent; spool 3")


def test_a_stuck_spool_writer_withholds_the_watchdog(caplog):
    spool, notifier = _Spool(), _Notifier()
    health = Health(_Session(last_alive=0.0), spool, _Uplink(), notifier, monotonic=lambda: 1.0)  # type: ignore
    spool.overdue = 45.0
    health.tick()
    assert notifier.pings == 0
    assert "the spool writer is 45 s late with a commit" in caplog.text


def _rewrite(path: Path, cfg: Dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(cfg))


def test_reload_applies_a_valid_config_and_rejects_an_invalid_one(certs, broker, subscriber, run_agent,
                                                                  tmp_path):
    cfg = agent_config(certs, broker.port)
    agent = run_agent(cfg)
    path = Path(agent.proc.args[-1])
    subscriber.telemetry()

    cfg["sensors"].append({"name": "door", "type": "digital", "pin": 4, "interval": 0.2})
    _rewrite(path, cfg)
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for("reloaded .*: sensors")
    deadline = time.monotonic() + 10
    # Sensors read in the same wake-up share a message.
    while "door" not in {r["sensor"] for r in subscriber.telemetry()["readings"]}:
        assert time.monotonic() < deadline

    mark = len(agent.lines)
    _rewrite(path, dict(cfg, sensors=[{"name": "x", "type": "nonsense"}]))
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for(r"reload rejected, still running the previous config: .*sensors\[0\]\(x\).type", after=mark)
    # Still sampling both sensors with the previous config.
    seen = {r["sensor"] for _ in range(6) for r in subscriber.telemetry()["readings"]}
    assert seen == {"temperature", "door"}
    assert agent.proc.poll() is None
    assert agent.stop() == 0


def _reload_command(pid: int, ack_dir: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """What the unit's ExecReload= runs, as systemd runs it."""
    return subprocess.run([sys.executable, "-m", "agent", "reload", "--pid", str(pid), "--dir", str(ack_dir),
                           "--timeout", str(timeout)], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=timeout + 30)


def _wait_for_file(path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "%s never appeared" % path
        time.sleep(0.05)


def test_the_reload_command_returns_only_once_the_new_config_is_applied(certs, broker, run_agent):
    cfg = agent_config(certs, broker.port)
    agent = run_agent(cfg)
    path, health = Path(agent.proc.args[-1]), Path(cfg["health"]["file"])
    # Written at the first connect, after the signal handlers are in place.
    _wait_for_file(health)
    for i in range(10):
        # A new interval, and a new keepalive, which replaces the MQTT session: a reload that takes
        # a while, so that a command returning early (as `kill -HUP` does) is caught.
        cfg["sensors"][0]["interval"] = round(0.2 + 0.01 * (i + 1), 2)
        cfg["mqtt"]["keepalive"] = 11 + i
        _rewrite(path, cfg)
        result = _reload_command(agent.proc.pid, health.parent)
        assert result.returncode == 0, result.stderr
        # Applied when the command returns: the health document already names the new file.
        assert json.loads(health.read_text())["config_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert agent.output.count("reloaded %s: sensors, broker session (reconnected)" % path) == 10
    # A broker that does not answer holds the reload up (the old session waits up to 5 s for its
    # "offline" to be acknowledged): the command waits with it, where `kill -HUP` would not.
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        cfg["mqtt"]["keepalive"] = 30
        _rewrite(path, cfg)
        result = _reload_command(agent.proc.pid, health.parent)
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    assert result.returncode == 0, result.stderr
    assert json.loads(health.read_text())["config_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_the_reload_command_fails_when_the_agent_refuses_the_new_config(certs, broker, run_agent):
    cfg = agent_config(certs, broker.port)
    agent = run_agent(cfg)
    path, health = Path(agent.proc.args[-1]), Path(cfg["health"]["file"])
    _wait_for_file(health)
    before = json.loads(health.read_text())["config_hash"]
    _rewrite(path, dict(cfg, sensors=[{"name": "x", "type": "nonsense"}]))
    result = _reload_command(agent.proc.pid, health.parent)
    assert result.returncode == 2
    assert "reload refused, the previous config stays: " in result.stderr
    assert "sensors[0](x).type" in result.stderr
    assert agent.proc.poll() is None
    assert json.loads(health.read_text())["config_hash"] == before
    assert agent.stop() == 0


# Stands in for an agent whose previous reload left an acknowledgement behind: the new one,
# written only when SIGHUP arrives, says something the old one does not.
STALE_ACK_CHILD = """
import signal, sys, time
from pathlib import Path
from agent.service.reload import Acknowledgement
ack = Acknowledgement(Path(sys.argv[1]))
ack.write(time.monotonic(), [])
got = []
signal.signal(signal.SIGHUP, lambda *_: got.append(time.monotonic()))
print("ready", flush=True)
while not got:
    time.sleep(0.01)
ack.write(got[0], ["config.yaml: sensors[0].interval: the answer to this SIGHUP"])
time.sleep(60)
"""


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", code, *args], cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def _end(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait()
    assert child.stdout is not None
    child.stdout.close()


def test_the_reload_command_waits_for_the_answer_to_its_own_signal_not_an_older_one(tmp_path):
    child = _child(STALE_ACK_CHILD, str(tmp_path))
    try:
        result = _reload_command(child.pid, tmp_path)
        assert result.returncode == 2, result.stderr
        assert "the answer to this SIGHUP" in result.stderr
    finally:
        _end(child)


def test_the_reload_command_gives_up_when_the_agent_never_answers(tmp_path):
    deaf = _child("import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); print('ready', flush=True); "
                  "time.sleep(60)")
    try:
        result = _reload_command(deaf.pid, tmp_path, timeout=0.5)
        assert result.returncode == 1
        assert "did not acknowledge the reload" in result.stderr
    finally:
        _end(deaf)
    # Nor does it wait out the timeout for a process that is gone.
    result = _reload_command(deaf.pid, tmp_path, timeout=600)
    assert result.returncode == 1
    assert "cannot signal PID %d" % deaf.pid in result.stderr


def test_certificate_rotation_by_reload_reconnects_without_losing_a_reading(certs, broker, run_agent, tmp_path):
    # The device's certificate files, in their own place, as on a board.
    device_dir = tmp_path / "device"
    device_dir.mkdir()
    for name in ("thunder10.crt", "thunder10.key"):
        shutil.copy2(certs.dir / name, device_dir / name)
    cfg = agent_config(certs, broker.port, tls={"cert_file": str(device_dir / "thunder10.crt"),
                                                "key_file": str(device_dir / "thunder10.key")})
    watcher = Subscriber(broker, certs)
    try:
        time.sleep(0.3)
        agent = run_agent(cfg)
        # The first message may carry several readings (those taken before the connection).
        seen = {r["seq"] for r in watcher.telemetry()["readings"]}
        first = min(seen)
        # A renewed certificate for the same device, written over the old files.
        renewed = pki.issue_device(tmp_path / "renewal", "thunder10", ca_directory=certs.dir)
        shutil.copy2(renewed.cert_file, device_dir / "thunder10.crt")
        shutil.copy2(renewed.key_file, device_dir / "thunder10.key")
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_for(r"reloaded .*broker session \(reconnected\)")
        time.sleep(1.0)
        assert agent.stop() == 0
        last = int(agent.wait_for(r"stopped: \d+ readings delivered").split("stopped: ")[1].split()[0])
        deadline = time.monotonic() + 10
        while not set(range(first, last + 1)) <= seen and time.monotonic() < deadline:
            try:
                seen.update(r["seq"] for r in watcher.telemetry(timeout=1)["readings"])
            except AssertionError:
                pass
        assert set(range(first, last + 1)) - seen == set()
        # The old session went offline cleanly (its network thread never waited on the uplink)
        # and left nothing stranded in flight.
        assert "offline status not acknowledged" not in agent.output
        assert "not yet acknowledged" not in agent.output
        # Two sessions, each with its own CONNECT: the second with the renewed certificate.
        assert broker.log.read_text().count("as thunder10 (") == 2
    finally:
        watcher.close()


def test_a_reload_that_moves_the_telemetry_keeps_one_count_of_what_was_delivered(certs, broker, subscriber,
                                                                                run_agent):
    # The broker section changes (a new telemetry topic): a new connection, the same session and
    # uplink, so the count at stop is every reading the broker got, on either topic.
    cfg = agent_config(certs, broker.port)
    agent = run_agent(cfg)
    path = Path(agent.proc.args[-1])
    before = subscriber.telemetry()["readings"]
    cfg["mqtt"]["topic"] = "edison/thunder10/moved"
    path.write_text(yaml.safe_dump(cfg))
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for(r"reloaded .*broker session \(reconnected\)")
    after = subscriber.telemetry("edison/thunder10/moved")["readings"]
    assert agent.stop() == 0
    delivered = int(agent.wait_for(r"stopped: \d+ readings delivered").split("stopped: ")[1].split()[0])
    seqs = {r["seq"] for r in before + after}
    deadline = time.monotonic() + 10
    while len(seqs) < delivered and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            topic, payload = subscriber.messages.get(timeout=1)
            if topic in ("edison/thunder10/telemetry", "edison/thunder10/moved"):
                seqs.update(r["seq"] for r in json.loads(payload)["readings"])
    # A message in flight at the reload may reach the broker twice (QoS 1), counted once.
    first = min(seqs)
    assert seqs == set(range(first, first + delivered))
    assert "not yet acknowledged" not in agent.output


def test_run_loads_only_what_the_daemon_needs():
    # Every module the daemon imports stays resident for months on a 1 GB board: the off-board
    # tools (agent/tools/: doctor, pki, install, status, watch) and cryptography must not come along with `run`.
    code = ("import sys; from agent import cli; cli.parser(['run']); import agent.service.daemon; "
            "print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "agent.service.daemon" in loaded
    # agent/tools/ is every off-board or operator tool: none of it may come along.
    assert [name for name in loaded if name == "agent.tools" or name.startswith("agent.tools.")] == []
    assert not {"cryptography", "importlib.metadata"} & set(loaded)
