"""The benches' rig: a mutual-TLS mosquitto on 127.0.0.1 with its certificates (ECDSA from
agent.tools.pki, RSA-2048 as in the founding post), a counting subscriber, the agent as a
process and a stand-in for systemd's notify socket. bench/run.py, bench/peers.py and
bench/edison_cap.py measure with it.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from agent.tools.pki import authority as pki  # noqa: E402

PY = sys.executable
CLIENTS = str(ROOT / "bench" / "clients.py")
DEVICE = "bench-edison-01"
# Chosen so one reading in one message is ~150 bytes on the wire (checked and reported).
SENSOR_NAME = "greenhouse-north-soil-temperature-probe"


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


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd, so the agent's watchdog is on: counts
    the watchdog pings and keeps the time READY=1 first arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.watchdog = 0
        self.ready_at: Optional[float] = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if b"WATCHDOG=1" in data:
                self.watchdog += 1
            if b"READY=1" in data and self.ready_at is None:
                self.ready_at = time.monotonic()


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
