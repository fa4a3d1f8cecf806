"""The agent against the alternatives, on a real mutual-TLS mosquitto on 127.0.0.1 (`make bench`).

    python bench/run.py [--rounds 3] [--quick] [--out bench/results.json]

Measures (issue 7), printing a table and writing bench/results.json:
  1  CPU per acknowledged 150-byte reading, interleaved rounds, medians:
       a  the agent (python -m agent run), spool on, 1 reading per message
       b  the agent, batch.max_readings 10, max_delay 1 s
       c  bare paho, one TLS session, QoS 1, burst, all PUBACKs awaited (the floor)
       c@rate  the same paced at the agent's rate (context: timer wake-ups)
       d  paho reconnect per reading (connect, TLS handshake, publish QoS 1, disconnect)
       e  mosquitto_pub once per reading
  2  connection cost: RSA-2048/TLS 1.2, ECDSA P-256/TLS 1.3, ECDSA/TLS 1.3 resumed
  3  footprint: VmHWM of the agent with 5 sensors vs an idle paho TLS client; idle wake-ups/s
  4  W1: 200 simulated sensors at 1 s, with the default batching and batched (10, 1 s)

Process CPU of the measured process only: /proc/<pid>/stat utime+stime for the agent (a
window after it is connected and warm), getrusage inside the client helpers
(bench/clients.py) and RUSAGE_CHILDREN deltas (os.wait4) for mosquitto_pub. Readings
acknowledged by the agent are counted by an independent subscriber (QoS 1) over the same
window; the agent's own "stopped: N readings delivered" is kept as a cross-check.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import edison  # noqa: E402  (bench/edison.py, beside this file)
import paho.mqtt.client as mqtt  # noqa: E402
import procstat  # noqa: E402  (bench/procstat.py: /proc snapshots and windows)
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from procstat import switches_by_thread as switches_by_thread  # noqa: E402  (bench/session_wakeups.py's)

from agent.tools.pki import authority as pki  # noqa: E402

PY = sys.executable
CLIENTS = str(ROOT / "bench" / "clients.py")
DEVICE = "bench-edison-01"
# Chosen so one reading in one message is ~150 bytes on the wire (checked and reported).
SENSOR_NAME = "greenhouse-north-soil-temperature-probe"
TARGETS = {"a/c": ("<=", 1.5), "b/c": ("<=", 0.35), "d/a": (">=", 30.0), "e/a": (">=", 100.0)}


# -- processes ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: "subprocess.Popen[bytes]") -> None:
    wanted = ":%04X " % port
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("bench: mosquitto exited")
        with open("/proc/net/tcp") as table:
            if any(wanted in line and line.split()[3] == "0A" for line in table):
                return
        time.sleep(0.05)
    raise SystemExit("bench: mosquitto is not listening on %d" % port)


# -- certificates -------------------------------------------------------------------------

def rsa_pki(d: Path) -> Dict[str, Path]:
    """The founding post's setup: RSA-2048 CA, broker and client certificates (made here, not by agent.tools.pki)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)

    def key() -> Any:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_key(k: Any, path: Path) -> None:
        path.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        path.chmod(0o600)

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench RSA CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out = {"ca": d / "ca.crt"}
    for name, server in (("localhost", True), ("device", False)):
        k = key()
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(ca_name).public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
             .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        (d / ("%s.crt" % name)).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(k, d / ("%s.key" % name))
        out[name + "_cert"] = d / ("%s.crt" % name)
        out[name + "_key"] = d / ("%s.key" % name)
    return out


# -- broker and subscriber ----------------------------------------------------------------

class Broker:
    def __init__(self, work: Path, ec: Dict[str, Path], rsa: Dict[str, Path]) -> None:
        self.port, self.rsa_port, self.plain_port = free_port(), free_port(), free_port()
        conf = work / "mosquitto.conf"
        rsa_listener = pki.mosquitto_listener(rsa["ca"], rsa["localhost_cert"], rsa["localhost_key"],
                                              port=self.rsa_port, address="127.0.0.1")
        conf.write_text("\n".join([
            # Started as root, mosquitto would switch to the mosquitto user before reading the 0600 key.
            "user %s" % getpass.getuser(),
            "persistence false",
            "log_dest file %s" % (work / "mosquitto.log"),
            "log_type error",
            "log_type warning",
            "max_inflight_messages 20",
            pki.mosquitto_listener(ec["ca"], ec["broker_cert"], ec["broker_key"], port=self.port,
                                   address="127.0.0.1"),
            rsa_listener,
            # For the connection-cost baseline only: what a connect costs without TLS.
            "listener %d 127.0.0.1" % self.plain_port,
            "allow_anonymous true",
            "",
        ]))
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc)
        wait_listening(self.rsa_port, self.proc)
        wait_listening(self.plain_port, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Subscriber:
    """Independent QoS 1 subscriber: counts readings (and messages, bytes) with arrival times."""

    def __init__(self, port: int, ec: Dict[str, Path]) -> None:
        import ssl
        ctx = ssl.create_default_context(cafile=str(ec["ca"]))
        ctx.load_cert_chain(str(ec["monitor_cert"]), str(ec["monitor_key"]))
        self.lock = threading.Lock()
        self.readings = self.messages = self.bytes = 0
        self.first = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-monitor", protocol=mqtt.MQTTv311)
        c.tls_set_context(ctx)
        ready = threading.Event()
        c.on_connect = lambda cl, *a: cl.subscribe("edison/+/telemetry", qos=1)
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._message
        c.connect("localhost", port)
        c.loop_start()
        if not ready.wait(10):
            raise SystemExit("bench: subscriber did not subscribe")
        self.client = c

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        n = len(json.loads(msg.payload)["readings"])
        with self.lock:
            self.readings += n
            self.messages += 1
            self.bytes += len(msg.payload)
        self.first.set()

    def snapshot(self) -> Tuple[int, int, int]:
        with self.lock:
            return self.readings, self.messages, self.bytes

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the agent ----------------------------------------------------------------------------

class Env:
    def __init__(self, work: Path, ec: Dict[str, Path], rsa: Dict[str, Path], broker: Broker, sub: Subscriber):
        self.work, self.ec, self.rsa, self.broker, self.sub = work, ec, rsa, broker, sub
        self.n = 0


def agent_config(env: Env, sensors: List[Dict[str, Any]], batch: Optional[Dict[str, Any]] = None) -> Path:
    env.n += 1
    d = env.work / ("agent%d" % env.n)
    (d / "state").mkdir(parents=True)
    cfg = {
        "device": {"id": DEVICE},
        "mqtt": {"host": "localhost", "port": env.broker.port, "client_id": "%s-%d" % (DEVICE, env.n),
                 "reconnect": {"min_delay": 1, "max_delay": 5},
                 "tls": {"ca_file": str(env.ec["ca"]), "cert_file": str(env.ec["device_cert"]),
                         "key_file": str(env.ec["device_key"]), "min_version": "1.2"}},
        "board": "simulated",
        "log_level": "info",
        "state_dir": str(d / "state"),
        "health": {"file": str(d / "state" / "health.json")},
        "spool": {},
        "sensors": sensors,
    }
    if batch:
        cfg["batch"] = batch
    path = d / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class AgentProc:
    def __init__(self, cfg: Path, extra_env: Optional[Dict[str, str]] = None) -> None:
        self.log_path = cfg.parent / "agent.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([PY, "-m", "agent", "run", "-c", str(cfg)], cwd=str(ROOT),
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {})))
        self.pid = self.proc.pid

    def wait_connected(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("bench: agent exited early:\n" + self.log_path.read_text())
            if "connected to" in self.log_path.read_text():
                return
            time.sleep(0.05)
        raise SystemExit("bench: agent did not connect:\n" + self.log_path.read_text())

    def stop(self) -> Optional[int]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        for line in self.log_path.read_text().splitlines():
            if "readings delivered" in line:
                return int(line.split("stopped: ")[1].split()[0])
        return None


def wait_quiet(count: Callable[[], int], quiet: float = 0.25, timeout: float = 2.0) -> None:
    """Until no reading has arrived for `quiet` s, at most `timeout` s: a window that starts and
    ends between two once-a-second bursts holds whole bursts, in its CPU and in its count."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        n = count()
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def measure_agent(env: Env, sensors: List[Dict[str, Any]], batch: Optional[Dict[str, Any]],
                  warm: float, window: float, between_bursts: bool = False) -> Dict[str, Any]:
    cfg = agent_config(env, sensors, batch)
    a = AgentProc(cfg)
    try:
        a.wait_connected()
        time.sleep(warm)
        if between_bursts:
            wait_quiet(lambda: env.sub.snapshot()[0])
        r0, m0, b0 = env.sub.snapshot()
        before = procstat.usage(a.pid)
        time.sleep(window)
        if between_bursts:
            wait_quiet(lambda: env.sub.snapshot()[0])
        r1, m1, b1 = env.sub.snapshot()
        spent = procstat.Window(before, procstat.usage(a.pid))
        threads = procstat.thread_count(a.pid)
        hwm = procstat.status_kib(a.pid, "VmHWM")
    finally:
        delivered = a.stop()
    readings = r1 - r0
    return {"cpu_s": spent.cpu_s, "wall_s": spent.wall_s, "acked": readings, "messages": m1 - m0,
            "bytes_per_msg": (b1 - b0) / max(1, m1 - m0), "us_per_reading": 1e6 * spent.cpu_s / max(1, readings),
            "delivered_total_from_log": delivered, "threads": threads, "vmhwm_kib": hwm,
            # schedstat: ns resolution, live threads only (a cross-check on the 10 ms ticks)
            "sched_cpu_s": spent.sched_cpu_s,
            "wakeups": spent.wakeups,
            "wakeups_per_reading_by_thread": spent.wakeups_by_thread(max(1, readings))}


# -- the other clients --------------------------------------------------------------------

def helper(env: Env, mode: str, *extra: str, port: Optional[int] = None) -> Dict[str, Any]:
    argv = [PY, CLIENTS, mode, "--port", str(port or env.broker.port), "--ca", str(env.ec["ca"]),
            "--cert", str(env.ec["device_cert"]), "--key", str(env.ec["device_key"]), *extra]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300).stdout
    result: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def per_reading(r: Dict[str, Any]) -> Dict[str, Any]:
    r["us_per_reading"] = 1e6 * r["cpu_s"] / max(1, r["acked"])
    if "wakeups" in r:
        r["wakeups_per_reading"] = r["wakeups"] / max(1, r["acked"])
    return r


def measure_mosquitto_pub(env: Env, count: int) -> Dict[str, Any]:
    argv = ["mosquitto_pub", "-h", "localhost", "-p", str(env.broker.port), "--cafile", str(env.ec["ca"]),
            "--cert", str(env.ec["device_cert"]), "--key", str(env.ec["device_key"]), "-q", "1",
            "-t", "bench/pub", "-m", "x" * 150]
    cpu = 0.0
    ok = 0
    t0 = time.monotonic()
    for _ in range(count):
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        cpu += ru.ru_utime + ru.ru_stime
        ok += p.returncode == 0
    return per_reading({"cpu_s": cpu, "wall_s": time.monotonic() - t0, "acked": ok})


# -- the measurements ---------------------------------------------------------------------

def pct(values: List[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def cpu_per_reading(env: Env, rounds: int, quick: bool) -> Dict[str, Any]:
    rate = 100.0  # one sensor every 10 ms
    window = 4.0 if quick else 12.0
    sensor = [{"name": SENSOR_NAME, "type": "analog", "pin": 0, "interval": 1.0 / rate, "unit": "degC"}]
    cases = {
        "a": lambda: measure_agent(env, sensor, None, 1.5, window),
        "b": lambda: measure_agent(env, sensor, {"max_readings": 10, "max_delay": 1}, 2.0, window),
        "c": lambda: per_reading(helper(env, "burst", "--count", str(1000 if quick else 3000))),
        "c@rate": lambda: per_reading(helper(env, "paced", "--rate", str(rate), "--seconds", str(window))),
        "d": lambda: per_reading(helper(env, "reconnect", "--count", str(50 if quick else 150))),
        "e": lambda: measure_mosquitto_pub(env, 40 if quick else 100),
    }
    order = list(cases)
    runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in order}
    for i in range(rounds):
        # Interleaved, rotated each round, so drift on a shared machine spreads over every case.
        rot = order[i % len(order):] + order[:i % len(order)]
        for k in rot:
            r = cases[k]()
            if "wakeups" in r and "wakeups_per_reading" not in r:
                r["wakeups_per_reading"] = r["wakeups"] / max(1, r["acked"])
            runs[k].append(r)
            print("  round %d %-7s %9.1f us/reading  (%d readings, %.2f s CPU%s)"
                  % (i + 1, k, r["us_per_reading"], r["acked"], r["cpu_s"],
                     ", %.2f wake-ups/reading" % r["wakeups_per_reading"] if "wakeups_per_reading" in r else ""),
                  flush=True)
    med = {k: statistics.median(r["us_per_reading"] for r in v) for k, v in runs.items()}
    ratios = {"a/c": med["a"] / med["c"], "b/c": med["b"] / med["c"], "d/a": med["d"] / med["a"],
              "e/a": med["e"] / med["a"], "a/c@rate": med["a"] / med["c@rate"],
              "b/c@rate": med["b"] / med["c@rate"]}
    verdict = {}
    for k, (op, target) in TARGETS.items():
        verdict[k] = ratios[k] <= target if op == "<=" else ratios[k] >= target
    return {"rate_readings_per_s": rate, "window_s": window, "rounds": rounds, "runs": runs,
            "median_us_per_reading": med, "ratios": ratios, "targets_met": verdict,
            "agent_bytes_per_msg": {k: statistics.median(r["bytes_per_msg"] for r in runs[k]) for k in ("a", "b")},
            "median_wakeups_per_reading": {k: statistics.median(r["wakeups_per_reading"] for r in v)
                                           for k, v in runs.items() if v and "wakeups_per_reading" in v[0]}}


def connection_cost(env: Env, quick: bool) -> Dict[str, Any]:
    ec, rsa = env.ec, env.rsa
    variants = [
        {"name": "plain-tcp (no TLS)", "port": env.broker.plain_port, "plain": True},
        {"name": "ecdsa-p256-tls1.2", "port": env.broker.port, "ca": str(ec["ca"]), "cert": str(ec["device_cert"]),
         "key": str(ec["device_key"]), "tls12": True, "resume": False},
        {"name": "rsa2048-tls1.2", "port": env.broker.rsa_port, "ca": str(rsa["ca"]), "cert": str(rsa["device_cert"]),
         "key": str(rsa["device_key"]), "tls12": True, "resume": False},
        {"name": "ecdsa-p256-tls1.3", "port": env.broker.port, "ca": str(ec["ca"]), "cert": str(ec["device_cert"]),
         "key": str(ec["device_key"]), "tls12": False, "resume": False},
        {"name": "ecdsa-p256-tls1.3-resumed", "port": env.broker.port, "ca": str(ec["ca"]),
         "cert": str(ec["device_cert"]), "key": str(ec["device_key"]), "tls12": False, "resume": True},
        {"name": "agent ClientContext, full", "port": env.broker.port, "ca": str(ec["ca"]),
         "cert": str(ec["device_cert"]), "key": str(ec["device_key"]), "tls12": False, "resume": False,
         "agent": True},
        {"name": "agent ClientContext, resumed", "port": env.broker.port, "ca": str(ec["ca"]),
         "cert": str(ec["device_cert"]), "key": str(ec["device_key"]), "tls12": False, "resume": True,
         "agent": True},
    ]
    raw = helper(env, "connect", "--count", str(40 if quick else 120), "--variants", json.dumps(variants))
    out: Dict[str, Any] = {}
    for name, r in raw.items():
        out[name] = {"n": len(r["wall"]), "cpu_us_median": 1e6 * statistics.median(r["cpu"]),
                     "wall_ms_p50": 1e3 * pct(r["wall"], 0.5), "wall_ms_p90": 1e3 * pct(r["wall"], 0.9),
                     "resumed_fraction": sum(r["reused"]) / len(r["reused"]),
                     "tls_version": max(set(r["version"]), key=r["version"].count)}
    full = out["agent ClientContext, full"]["cpu_us_median"]
    out["ratios"] = {"agent ecdsa/rsa (target <= 0.8)": full / out["rsa2048-tls1.2"]["cpu_us_median"],
                     "agent resumed/full (target <= 0.65)": out["agent ClientContext, resumed"]["cpu_us_median"]
                     / full,
                     "max p90 wall ms (target <= 10)": max(v["wall_ms_p90"] for k, v in out.items()
                                                           if isinstance(v, dict) and "wall_ms_p90" in v)}
    out["note"] = ("client CPU (thread_time) and wall from connect() to CONNACK, paho on one thread; "
                   "'ecdsa-p256-tls1.3-resumed' is the bench's own SSLContext subclass, 'agent ClientContext' "
                   "is agent.mqtt.tls.build_context() with its remember_session() after CONNACK")
    out["agent_session_resumes"] = agent_resumes(env)
    return out


def agent_resumes(env: Env) -> Dict[str, Any]:
    """End to end: the running agent loses its connection (a client takes over its client id) and
    reconnects; its log says whether the TLS session was resumed."""
    import ssl
    cfg = agent_config(env, [{"name": "t", "type": "analog", "pin": 0, "interval": 1, "unit": "degC"}])
    client_id = "%s-%d" % (DEVICE, env.n)
    a = AgentProc(cfg)
    line = None
    try:
        a.wait_connected()
        time.sleep(0.5)
        ctx = ssl.create_default_context(cafile=str(env.ec["ca"]))
        ctx.load_cert_chain(str(env.ec["device_cert"]), str(env.ec["device_key"]))
        intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        intruder.tls_set_context(ctx)
        done = threading.Event()
        intruder.on_connect = lambda *x: done.set()
        intruder.connect("localhost", env.broker.port)
        intruder.loop_start()
        done.wait(5)
        intruder.disconnect()
        intruder.loop_stop()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and line is None:
            for text in a.log_path.read_text().splitlines():
                if "again" in text and "connected to" in text:
                    line = text
            time.sleep(0.1)
    finally:
        a.stop()
    return {"reconnected": line is not None, "resumed": bool(line and "resumed TLS session" in line),
            "log_line": line}


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd, so the agent's watchdog is on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.watchdog = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if b"WATCHDOG=1" in data:
                self.watchdog += 1


def footprint(env: Env, quick: bool) -> Dict[str, Any]:
    # The issue's 60 s: at one reading per 10 s a 30 s window held 3, and one wake-up more was 0.033/s.
    window = 10.0 if quick else 60.0
    five = [
        {"name": "temperature", "type": "analog", "pin": 0, "interval": 2, "scale": 0.4883, "offset": -50,
         "unit": "degC"},
        {"name": "room", "type": "bme280", "interval": 2, "phase": 0.5},
        {"name": "light", "type": "bh1750", "interval": 2, "phase": 1.0},
        {"name": "door", "type": "digital", "pin": 4, "interval": 1},
        {"name": "wind", "type": "counter", "pin": 7, "report": "rate", "per_pulse": 2.4, "unit": "km/h",
         "interval": 5},
    ]
    idle_sensor = [{"name": "temperature", "type": "analog", "pin": 0, "interval": 10, "unit": "degC"}]
    notify = NotifySocket(env.work / "notify.sock")
    a5 = AgentProc(agent_config(env, five))
    # systemd's WatchdogSec=30 (systemd/edison-agent.service): WATCHDOG_USEC without WATCHDOG_PID.
    idle = AgentProc(agent_config(env, idle_sensor),
                     {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "30000000"})
    paho_idle = subprocess.Popen([PY, CLIENTS, "idle", "--port", str(env.broker.port), "--ca", str(env.ec["ca"]),
                                  "--cert", str(env.ec["device_cert"]), "--key", str(env.ec["device_key"])],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        a5.wait_connected()
        idle.wait_connected()
        paho_idle.stdout.readline()  # type: ignore[union-attr]
        time.sleep(2.0)
        agent0, paho0 = procstat.usage(idle.pid), procstat.usage(paho_idle.pid)
        w0 = notify.watchdog
        time.sleep(window)
        agent = procstat.Window(agent0, procstat.usage(idle.pid))
        paho = procstat.Window(paho0, procstat.usage(paho_idle.pid))
        res: Dict[str, Any] = {
            "window_s": window,
            "agent_5_sensors_vmhwm_mib": procstat.status_kib(a5.pid, "VmHWM") / 1024,
            "agent_5_sensors_threads": procstat.thread_count(a5.pid),
            "paho_idle_vmhwm_mib": procstat.status_kib(paho_idle.pid, "VmHWM") / 1024,
            "agent_idle_wakeups_per_s": agent.wakeups / window,
            "agent_idle_threads": agent.threads,
            "agent_idle_cpu_ms_per_min": agent.sched_cpu_s * 1e3 * 60 / window,
            "agent_idle_watchdog_pings": notify.watchdog - w0,
            "paho_idle_wakeups_per_s": paho.wakeups / window,
            "paho_idle_threads": paho.threads,
            "paho_idle_cpu_ms_per_min": paho.sched_cpu_s * 1e3 * 60 / window,
        }
        res["rss_ratio_agent_over_paho (target <= 1.3)"] = (res["agent_5_sensors_vmhwm_mib"]
                                                             / res["paho_idle_vmhwm_mib"])
        res["agent_idle_wakeups_per_s_by_thread"] = {k: round(v, 3) for k, v in
                                                     agent.wakeups_by_thread(window).items()}
    finally:
        a5.stop()
        idle.stop()
        paho_idle.stdin.close()  # type: ignore[union-attr]
        paho_idle.wait(10)
        notify.sock.close()
    return res


def w1(env: Env, quick: bool) -> Dict[str, Any]:
    window = 8.0 if quick else 20.0
    sensors = [{"name": "s%03d" % i, "type": "analog", "pin": i % 6, "interval": 1, "unit": "degC"}
               for i in range(200)]
    out = {}
    for name, batch in (("default", None), ("batched (10, 1 s)", {"max_readings": 10, "max_delay": 1})):
        r = measure_agent(env, sensors, batch, 3.0, window)
        out[name] = r
        print("  W1 %-18s %9.1f us/reading  (%d readings, %d threads)"
              % (name, r["us_per_reading"], r["acked"], r["threads"]), flush=True)
    out["peers_us_per_reading (FIELD-NOTES, not measured here)"] = {"collectd 5.12": 50, "mqtt-io 2.7": 400}
    out["targets"] = {"batched <= collectd 50 us": out["batched (10, 1 s)"]["us_per_reading"] <= 50,
                      "default <= 0.5 x mqtt-io = 200 us": out["default"]["us_per_reading"] <= 200}
    return out


def spool_drain(env: Env, quick: bool) -> Dict[str, Any]:
    """A backlog as after an outage: the readings are put in the agent's spool file first (with
    the agent's own Spool), then the agent starts with its broker up; seconds from its connect
    to the subscriber having every reading. Target: 6,000 in <= 10 s."""
    from agent.delivery.spool import Spool
    from agent.sampling.reading import Sample

    backlog = 6000
    cfg = agent_config(env, [], None)
    spool = Spool(cfg.parent / "state" / "spool.db")
    now = time.time()
    for i in range(backlog):
        spool.append(Sample(SENSOR_NAME, float(i), "degC", now))
    spool.close()
    r0 = env.sub.snapshot()[0]
    started = time.monotonic()
    a = AgentProc(cfg)
    try:
        # The log shows "connected" a little after the replay has begun: the time from the
        # process's start (imports, TLS handshake included) is the honest upper bound.
        a.wait_connected()
        connected = time.monotonic()
        deadline = connected + 60
        while env.sub.snapshot()[0] - r0 < backlog and time.monotonic() < deadline:
            time.sleep(0.01)
        done = time.monotonic()
    finally:
        a.stop()
    received = env.sub.snapshot()[0] - r0
    drained = done - started
    print("  %d-reading backlog: %d received %.2f s after the agent started (%.2f s after its connect line)"
          % (backlog, received, drained, done - connected), flush=True)
    return {"backlog": backlog, "received": received, "drain_s": drained, "after_connect_s": done - connected,
            "target_met (<= 10 s)": received >= backlog and drained <= 10.0}


def machine() -> Dict[str, Any]:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[:1]
    import ssl
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "agent"], capture_output=True,
                           text=True).stdout.split("\n")
    return {"agent_commit": git.stdout.strip(),
            # The agent is measured as it is in the working tree: say when that differs from the commit.
            "agent_uncommitted": [line[3:] for line in dirty if line.strip()],
            "cpu_model": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
            "paho": importlib.metadata.version("paho-mqtt"),
            "mosquitto": mosq[0] if mosq else "", "date_utc": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC")}


def crypto_speed() -> Dict[str, Any]:
    """This machine's `openssl speed` for the handshake's asymmetric operations and a Python
    microbenchmark: the two figures to take on the board for a scaled estimate (docs/performance.md)."""
    out: Dict[str, Any] = {}
    try:
        text = subprocess.run(["openssl", "speed", "-seconds", "1", "rsa2048", "ecdsap256", "ecdhx25519"],
                              capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return out
    for line in text.splitlines():
        f = line.split()
        if line.startswith("rsa 2048 bits"):
            out["rsa2048_sign_us"], out["rsa2048_verify_us"] = 1e6 / float(f[-2]), 1e6 / float(f[-1])
        elif "ecdsa (nistp256)" in line:
            out["ecdsap256_sign_us"], out["ecdsap256_verify_us"] = 1e6 / float(f[-2]), 1e6 / float(f[-1])
        elif "ecdh (X25519)" in line:
            out["x25519_op_us"] = 1e6 / float(f[-1])
    import timeit

    from agent.sampling.reading import Reading, encode_telemetry
    r = [Reading(1, time.time(), SENSOR_NAME, 23.4765625, "degC")]
    n = 20000
    out["python_encode_telemetry_us"] = 1e6 * min(timeit.repeat(lambda: encode_telemetry(DEVICE, r), number=n,
                                                                repeat=3)) / n
    return out


def table(results: Dict[str, Any]) -> str:
    lines = []
    c = results.get("cpu_per_reading")
    if c:
        lines += ["", "1. CPU per acknowledged reading (median of %d interleaved rounds; %g readings/s for the agent)"
                  % (c["rounds"], c["rate_readings_per_s"]),
                  "   %-8s %14s   %s" % ("case", "us/reading", "all rounds")]
        for k, v in c["median_us_per_reading"].items():
            lines.append("   %-8s %14.1f   %s" % (k, v, ", ".join("%.1f" % r["us_per_reading"] for r in c["runs"][k])))
        lines.append("   wake-ups per reading (median, all threads): %s" % ", ".join(
            "%s %.2f" % (k, v) for k, v in c.get("median_wakeups_per_reading", {}).items()))
        for k, v in c["ratios"].items():
            t = TARGETS.get(k)
            verdict = ("  target %s %g: %s" % (t[0], t[1], "met" if c["targets_met"][k] else "NOT met")) if t else ""
            lines.append("   %-9s %8.2f%s" % (k, v, verdict))
    cc = results.get("connection_cost")
    if cc:
        lines += ["", "2. Connection cost (connect to CONNACK, client side)",
                  "   %-27s %8s %10s %10s %8s %8s" % ("variant", "CPU us", "wall p50", "wall p90", "resumed", "TLS")]
        for k, v in cc.items():
            if isinstance(v, dict) and "cpu_us_median" in v:
                lines.append("   %-27s %8.0f %8.2fms %8.2fms %7.0f%% %8s" % (k, v["cpu_us_median"], v["wall_ms_p50"],
                             v["wall_ms_p90"], 100 * v["resumed_fraction"], v["tls_version"]))
        for k, v in cc["ratios"].items():
            lines.append("   %s: %.2f" % (k, v))
        ar = cc.get("agent_session_resumes", {})
        lines.append("   the agent itself, reconnecting after a session takeover: reconnected %s, resumed %s"
                     % (ar.get("reconnected"), ar.get("resumed")))
    f = results.get("footprint")
    if f:
        lines += ["", "3. Footprint (idle window %g s)" % f["window_s"]]
        for k, v in f.items():
            if k != "window_s":
                lines.append("   %-45s %s" % (k, ("%.2f" % v) if isinstance(v, float) else v))
    w = results.get("w1")
    if w:
        lines += ["", "4. W1: 200 simulated sensors at 1 s"]
        for k in ("default", "batched (10, 1 s)"):
            lines.append("   %-20s %8.1f us/reading  (%d readings in %.0f s, %d threads)"
                         % (k, w[k]["us_per_reading"], w[k]["acked"], w[k]["wall_s"], w[k]["threads"]))
        for k, v in w["targets"].items():
            lines.append("   %-40s %s" % (k, "met" if v else "NOT met"))
    sd = results.get("spool_drain")
    if sd:
        lines += ["", "5. Spool: a %d-reading backlog drains in %.2f s (%d received; target <= 10 s: %s)"
                  % (sd["backlog"], sd["drain_s"], sd["received"], "met" if sd["target_met (<= 10 s)"] else "NOT met"),
                  "   fsyncs per second at 1/10/100 readings/s: python bench/spool_bench.py"]
    sp = results.get("speed")
    if sp:
        lines += ["", "6. openssl speed / Python on this machine (us per operation)",
                  "   " + ", ".join("%s %.1f" % (k, v) for k, v in sp.items())]
    if "edison_estimate" in results:
        lines += ["", "7. Scaled estimate for the Intel Edison (method: bench/edison.py)",
                  edison.describe(results["edison_estimate"])]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="shorter windows, for a smoke test")
    p.add_argument("--only", default="1,2,3,4,5,6", help="which parts, e.g. 1,2")
    p.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    args = p.parse_args()
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_pub") is None:
        raise SystemExit("bench: needs mosquitto and mosquitto_pub (apt-get install mosquitto mosquitto-clients)")
    parts = set(args.only.split(","))
    started = time.monotonic()
    # A partial run (--only) replaces its own parts of an earlier results file and keeps the rest.
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    results: Dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="edison-bench-") as tmp:
        work = Path(tmp)
        ecd = work / "pki"
        pki.init_ca(ecd, name="bench CA")
        broker_issued = pki.issue_broker(ecd, "localhost", ips=["127.0.0.1"])
        device = pki.issue_device(ecd, DEVICE)
        monitor = pki.issue_device(ecd, "monitor")
        ec = {"ca": ecd / "ca.crt", "broker_cert": broker_issued.cert_file, "broker_key": broker_issued.key_file,
              "device_cert": device.cert_file, "device_key": device.key_file,
              "monitor_cert": monitor.cert_file, "monitor_key": monitor.key_file}
        rsa = rsa_pki(work / "rsa")
        broker = Broker(work, ec, rsa)
        sub = Subscriber(broker.port, ec)
        env = Env(work, ec, rsa, broker, sub)
        try:
            if "1" in parts:
                print("1. CPU per reading", flush=True)
                results["cpu_per_reading"] = cpu_per_reading(env, args.rounds, args.quick)
            if "2" in parts:
                print("2. connection cost", flush=True)
                results["connection_cost"] = connection_cost(env, args.quick)
            if "3" in parts:
                print("3. footprint and idle wake-ups", flush=True)
                results["footprint"] = footprint(env, args.quick)
            if "4" in parts:
                print("4. W1", flush=True)
                results["w1"] = w1(env, args.quick)
            if "5" in parts:
                print("5. spool backlog drain", flush=True)
                results["spool_drain"] = spool_drain(env, args.quick)
            if "6" in parts:
                print("6. openssl speed and a Python microbenchmark (for scaling to another CPU)", flush=True)
                results["speed"] = crypto_speed()
        finally:
            sub.stop()
            broker.stop()
    results["runtime_s"] = time.monotonic() - started
    for part, value in previous.items():
        results.setdefault(part, value)
    if "6" in parts:
        results["edison_estimate"] = edison.estimate(results)
    print(table(results))
    print("\nruntime %.0f s; results in %s" % (results["runtime_s"], args.out))
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
