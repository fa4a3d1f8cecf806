"""Fixtures: certificates from the project's own pki, a real mosquitto on 127.0.0.1, the agent as a process."""

from __future__ import annotations

import contextlib
import datetime
import getpass
import importlib
import itertools
import json
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.tools.pki import authority as pki

ROOT = Path(__file__).resolve().parent.parent
FAKE_MRAA = Path(__file__).resolve().parent / "fake_mraa"
PASSPHRASE = b"correct horse battery staple"
EPOCH = 1_700_000_000.0


def pytest_configure(config: pytest.Config) -> None:
    if shutil.which("mosquitto") is None:
        pytest.exit("mosquitto is not installed: run 'make test' (it installs it) or apt-get install mosquitto",
                    returncode=3)


class Clock:
    """Time for the simulated part; the driver's waits advance it instead of sleeping."""

    def __init__(self) -> None:
        self.now = EPOCH
        self.waits: List[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: Path
    broker_cert: Path
    broker_key: Path
    device_cert: Path
    device_key: Path
    monitor_cert: Path
    monitor_key: Path
    encrypted_cert: Path
    encrypted_key: Path
    expired_cert: Path
    expired_key: Path
    foreign_cert: Path
    foreign_key: Path
    wrong_host_cert: Path
    wrong_host_key: Path



@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """TMP/pki with a CA named "Test CA", for the certificate tool's tests (tests/pki_testing.py)."""
    from pki_testing import new_ca

    return new_ca(tmp_path)

@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Everything made with `agent.tools.pki.authority`, the way a user would with `edison-agent pki`."""
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d)
    broker = pki.issue_broker(d, "localhost", ips=["127.0.0.1"])
    wrong_host = pki.issue_broker(d, "iotgateway1")
    device = pki.issue_device(d, "thunder10")
    monitor = pki.issue_device(d, "monitor")
    encrypted = pki.issue_device(d, "thunder11", passphrase=PASSPHRASE)
    ten_days_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    expired = pki.issue_device(d, "thunder12", not_before=ten_days_ago, days=1)
    other = tmp_path_factory.mktemp("other-ca")
    pki.init_ca(other, name="Some other CA")
    foreign = pki.issue_device(other, "thunder13")
    return Certs(d, d / "ca.crt", broker.cert_file, broker.key_file, device.cert_file, device.key_file,
                 monitor.cert_file, monitor.key_file, encrypted.cert_file, encrypted.key_file,
                 expired.cert_file, expired.key_file, foreign.cert_file, foreign.key_file,
                 wrong_host.cert_file, wrong_host.key_file)


@pytest.fixture
def mraa() -> Iterator[Any]:
    """The fake libmraa binding (tests/fake_mraa), reset around each test and unloaded after."""
    sys.path.insert(0, str(FAKE_MRAA))
    try:
        module = importlib.import_module("mraa")
        assert Path(module.__file__ or "").resolve().parent == FAKE_MRAA, "imported some other mraa"
        module._reset()
        yield module
        module._reset()
    finally:
        sys.path.remove(str(FAKE_MRAA))
        # Later tests that pick a board with `auto` must not find the fake.
        sys.modules.pop("mraa", None)


class Broker:
    """A real mosquitto on 127.0.0.1 requiring client certificates; restartable on the same port."""

    def __init__(self, workdir: Path, certs: Certs, cert: Path, key: Path, tls: bool = True,
                 persistent: bool = False, acl_file: Optional[Path] = None,
                 crlfile: Optional[Path] = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        listener = (pki.mosquitto_listener(certs.ca, cert, key, port=self.port, address="127.0.0.1",
                                           crlfile=crlfile) if tls
                    else "listener %d 127.0.0.1\nallow_anonymous true" % self.port)
        self.conf.write_text("\n".join([
            # Started as root, mosquitto would switch to the mosquitto user before reading its key.
            "user %s" % getpass.getuser(),
            # Persistence keeps subscribers' sessions and queued messages across a restart.
            "persistence %s" % ("true" if persistent else "false"),
            # Saved every second, so sessions survive even a SIGKILL of the broker.
            "autosave_interval 1",
            "persistence_location %s/" % workdir,
            "log_dest file %s" % self.log,
            "log_type all",
            # With the listener's use_identity_as_username, ACL usernames are certificate CNs.
            *(["acl_file %s" % acl_file] if acl_file is not None else []),
            listener,
            "",
        ]))
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("mosquitto exited: %s" % self.log.read_text(errors="replace")[-2000:]) from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen on %d" % self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path, certs: Certs) -> Iterator[Broker]:
    b = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key)
    b.start()
    yield b
    b.stop()


class Subscriber:
    """mosquitto_sub, an MQTT client independent of ours, watching everything under edison/."""

    def __init__(self, broker: Broker, certs: Certs, session: Optional[str] = None, topic: str = "edison/#") -> None:
        self.messages: "queue.Queue[tuple[str, str]]" = queue.Queue()
        # With a session name the broker keeps the subscription, and queues for it, while we are away.
        persistent = ["-c", "-i", session] if session else []
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(certs.ca),
             "--cert", str(certs.monitor_cert), "--key", str(certs.monitor_key), "-q", "1", "-v",
             "-t", topic, *persistent], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            topic, _, payload = raw.decode().rstrip("\n").partition(" ")
            self.messages.put((topic, payload))

    def next(self, topic: str, timeout: float = 15.0, payload: Optional[str] = None) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no message on %s%s within %.0f s" % (
                    topic, " with payload %r" % payload if payload else "", timeout))
            try:
                got_topic, got = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if got_topic == topic and (payload is None or got == payload):
                return got

    def online(self, device: str = "thunder10", timeout: float = 15.0) -> Dict[str, Any]:
        """The next status saying online: a JSON object since each run announces its seq start."""
        deadline = time.monotonic() + timeout
        while True:
            payload = self.next("edison/%s/status" % device, max(0.0, deadline - time.monotonic()))
            if payload.startswith("{") and json.loads(payload)["status"] == "online":
                return dict(json.loads(payload))

    def telemetry(self, topic: str = "edison/thunder10/telemetry", timeout: float = 15.0) -> Dict[str, Any]:
        return dict(json.loads(self.next(topic, timeout)))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    dup: bool  # the broker's own resend of a copy it had sent before (transport, not the publisher)
    at: float  # time.monotonic() on arrival


class Recorder:
    """Every message on `topic`, in arrival order, from a persistent session of the test's own.

    paho, not mosquitto_sub like Subscriber: it keeps what mosquitto_sub cannot print (the DUP
    flag, the arrival time) for a test to count afterwards, and its session survives a broker
    restart with persistence."""

    def __init__(self, broker: Broker, certs: Certs, client_id: str, topic: str = "edison/#") -> None:
        self._lock = threading.Lock()
        self._received: List[Received] = []
        subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        ctx.load_cert_chain(str(certs.monitor_cert), str(certs.monitor_key))
        self._client.tls_set_context(ctx)
        self._client.reconnect_delay_set(1, 2)
        self._client.on_message = self._message
        self._client.on_subscribe = lambda *a: subscribed.set()
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 1)
        self._client.connect("127.0.0.1", broker.port)
        self._client.loop_start()
        assert subscribed.wait(15)

    def _message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._received.append(Received(msg.topic, bytes(msg.payload), bool(msg.dup), time.monotonic()))

    def received(self) -> List[Received]:
        with self._lock:
            return list(self._received)

    def close(self) -> List[Received]:
        """Stops, and returns everything received."""
        self._client.disconnect()
        self._client.loop_stop()
        return self.received()


@pytest.fixture
def subscriber(broker: Broker, certs: Certs) -> Iterator[Subscriber]:
    s = Subscriber(broker, certs)
    # Subscribed before the agent starts, so nothing published is missed.
    time.sleep(0.3)
    yield s
    s.close()


_STATE_DIRS = itertools.count()


def agent_config(certs: Certs, port: int, **overrides: Any) -> Dict[str, Any]:
    tls: Dict[str, Any] = {"ca_file": str(certs.ca), "cert_file": str(certs.device_cert),
                           "key_file": str(certs.device_key)}
    tls.update(overrides.pop("tls", {}))
    state_dir = certs.dir.parent / ("state-%d" % next(_STATE_DIRS))
    cfg: Dict[str, Any] = {
        "device": {"id": "thunder10"},
        # A spread of 0.2 s keeps the first attempt after a lost connection at 0.2-0.4 s, as before
        # the spread existed: a test that restarts its broker is one board, not a fleet.
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 10,
                 "reconnect": {"min_delay": 0.2, "max_delay": 1.0, "spread": 0.2}, "tls": tls},
        "board": "simulated",
        # Each test's own spool, never the system's /var/lib/edison-agent.
        "state_dir": str(state_dir),
        # Never the system's /run/edison-agent either.
        "health": {"file": str(state_dir / "health.json")},
        "sensors": [{"name": "temperature", "type": "analog", "pin": 0, "interval": 0.2,
                     "scale": 0.5, "offset": -50, "unit": "degC"}],
    }
    mqtt_overrides = overrides.pop("mqtt", {})
    cfg["mqtt"].update(mqtt_overrides)
    cfg["health"].update(overrides.pop("health", {}))
    cfg.update(overrides)
    return cfg


class AgentProcess:
    """`python -m agent run` as a user would start it, with its log lines collected."""

    def __init__(self, config_path: Path, env: Optional[Dict[str, str]] = None, own_group: bool = False) -> None:
        full_env = dict(os.environ)
        full_env.pop("EDISON_AGENT_KEY_PASSWORD", None)
        full_env.update(env or {})
        self.lines: List[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(config_path)],
                                     cwd=str(ROOT), env=full_env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=own_group)
        self._own_group = own_group
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 15.0, after: int = 0) -> str:
        """The first log line from index `after` on that matches `pattern` (a regex)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[after:]:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise AssertionError("no log line matching %r within %.0f s; output:\n%s"
                                         % (pattern, timeout, "\n".join(self.lines)))
                self._cond.wait(min(remaining, 0.2))

    def close(self) -> None:
        if self._own_group:
            # The whole group, even after its leader exited: nothing the agent started may outlive a test.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        elif self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("agent did not exit within %.0f s of signal %d; output:\n%s"
                                 % (timeout, sig, self.output)) from None


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Any]:
    started: List[AgentProcess] = []

    def start(cfg: Dict[str, Any], env: Optional[Dict[str, str]] = None) -> AgentProcess:
        path = tmp_path / ("agent-%d.yaml" % len(started))
        path.write_text(yaml.safe_dump(cfg))
        process = AgentProcess(path, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()
