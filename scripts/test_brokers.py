"""`make test-brokers` (issue 19 item 5; not in CI: slow, and it needs Debian's rabbitmq-server):
the agent against a two-node RabbitMQ cluster on 127.0.0.1 and against two mosquittos, the node
or broker in use SIGKILLed mid-run, every seq counted at a subscriber on the other one.

Everything lives in a temporary directory and on 127.0.0.1 (its own epmd port, its own Erlang
cookie); the script starts and stops every process it needs. Prints its figures as JSON and
exits 1 when a reading is missing."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.tools.pki import authority as pki  # noqa: E402
from agent.tools.pki import broker_setup  # noqa: E402

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
DEVICE = "thunder10"
RUN_BEFORE_KILL = 8.0
RUN_AFTER_KILL = 8.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: "subprocess.Popen[bytes]", timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("exited before listening on %d" % port) from None
            time.sleep(0.3)
    raise RuntimeError("nothing listening on %d after %.0f s" % (port, timeout))


class RabbitNode:
    """One node: its own name, ports, data and log directories; the shared cookie and epmd port."""

    def __init__(self, base: Path, name: str, env: Dict[str, str], ca: Path, cert: Path, key: Path) -> None:
        self.name = "%s@localhost" % name
        self.dir = base / name
        self.dir.mkdir()
        self.mqtt_port = free_port()
        self.env = dict(env, RABBITMQ_NODENAME=self.name, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                        RABBITMQ_NODE_PORT=str(free_port()), RABBITMQ_DIST_PORT=str(free_port()),
                        RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"), RABBITMQ_LOG_BASE=str(self.dir / "log"),
                        RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
                        RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
                        RABBITMQ_PID_FILE=str(self.dir / "pid"))
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        # What `pki issue-broker --broker rabbitmq` prints, on this node's port.
        (self.dir / "rabbitmq.conf").write_text(broker_setup.snippet("rabbitmq", ca, cert, key, self.mqtt_port)
                                                + "\nloopback_users = none\n")
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env,
                                     stdout=open(self.dir / "stdout.log", "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        # await_startup fails at once while the node has not yet registered with epmd: ask again.
        deadline = time.monotonic() + 120
        while True:
            try:
                self.ctl("await_startup", timeout=120)
                break
            except RuntimeError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        wait_port(self.mqtt_port, self.proc)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError("rabbitmqctl %s: %s%s" % (" ".join(args), done.stdout, done.stderr))
        return done.stdout

    def kill(self) -> None:
        """SIGKILL the node's whole process group (the Erlang VM and its helpers)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.ctl("stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            self.kill()


class Mosquitto:
    def __init__(self, base: Path, name: str, ca: Path, cert: Path, key: Path) -> None:
        self.dir = base / name
        self.dir.mkdir()
        self.mqtt_port = free_port()
        (self.dir / "mosquitto.conf").write_text("\n".join([
            "user %s" % os.environ.get("USER", "root"), "log_dest file %s" % (self.dir / "mosquitto.log"),
            broker_setup.snippet("mosquitto", ca, cert, key, self.mqtt_port).replace(
                "listener %d" % self.mqtt_port, "listener %d 127.0.0.1" % self.mqtt_port), ""]))
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.mqtt_port, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    stop = kill


class Watcher:
    """mosquitto_sub (MQTT 3.1.1, QoS 1) on one broker, counting the agent's telemetry seqs."""

    def __init__(self, port: int, pki_dir: Path, topic: str) -> None:
        self.seqs: List[int] = []
        self.retained: List[str] = []
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "--cafile", str(pki_dir / "ca.crt"),
             "--cert", str(pki_dir / "monitor.crt"), "--key", str(pki_dir / "monitor.key"), "-V", "mqttv311",
             "-q", "1", "-v", "-t", topic, "-i", "monitor-%d" % port], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            topic, _, payload = raw.decode(errors="replace").rstrip("\n").partition(" ")
            if topic.endswith("/telemetry"):
                self.seqs.extend(r["seq"] for r in json.loads(payload)["readings"])
            else:
                self.lines.put(raw.decode(errors="replace"))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run_agent(base: Path, pki_dir: Path, hosts: List[str], protocol: int) -> "subprocess.Popen[bytes]":
    state = base / "state"
    cfg: Dict[str, Any] = {
        "device": {"id": DEVICE},
        "mqtt": {"hosts": hosts, "protocol": protocol, "keepalive": 10, "failback": 0,
                 "reconnect": {"min_delay": 0.5, "max_delay": 5, "spread": 1},
                 "tls": {"ca_file": str(pki_dir / "ca.crt"), "cert_file": str(pki_dir / ("%s.crt" % DEVICE)),
                         "key_file": str(pki_dir / ("%s.key" % DEVICE))}},
        "board": "simulated", "state_dir": str(state), "health": {"file": str(state / "health.json"),
                                                                  "interval": 2},
        "sensors": [{"name": "temperature", "type": "analog", "pin": 0, "interval": 0.1, "scale": 0.5,
                     "offset": -50, "unit": "degC"}],
    }
    path = base / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(path)], cwd=str(ROOT),
                            stdout=open(base / "agent.log", "wb"), stderr=subprocess.STDOUT)


def doctor(base: Path, pki_dir: Path, port: int, device: str, protocol: int) -> Dict[str, str]:
    """`edison-agent doctor --json` for `device` on one node: {check: "status: detail -- fix"}."""
    cfg = {"device": {"id": device}, "board": "simulated", "state_dir": str(base / "doctor-state"),
           "mqtt": {"host": "127.0.0.1", "port": port, "protocol": protocol,
                    "tls": {"ca_file": str(pki_dir / "ca.crt"), "cert_file": str(pki_dir / ("%s.crt" % device)),
                            "key_file": str(pki_dir / ("%s.key" % device))}},
           "sensors": []}
    path = base / ("doctor-%s-%d.yaml" % (device, protocol))
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "agent", "doctor", "--json", "-c", str(path)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=120)
    return {c["check"]: "%s: %s%s" % (c["status"], c["detail"], " -- fix: " + c["fix"] if c["fix"] else "")
            for c in json.loads(done.stdout) if c["check"] in ("mqtt connect", "publish status",
                                                                "publish telemetry", "publish health")}


def retained_seen(port: int, pki_dir: Path, topic: str) -> bool:
    """Whether a new subscriber on this node gets a retained message on `topic` within 3 s."""
    done = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "--cafile", str(pki_dir / "ca.crt"),
         "--cert", str(pki_dir / "monitor.crt"), "--key", str(pki_dir / "monitor.key"), "-V", "mqttv311",
         "-t", topic, "-C", "1", "-W", "3", "--retained-only"], capture_output=True, text=True, timeout=30)
    return bool(done.stdout.strip())


def _stamp(line: str) -> float:
    import datetime

    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def scenario(name: str, base: Path, pki_dir: Path, first: Any, second: Any, protocol: int,
             watch_first: bool) -> Dict[str, Any]:
    """The agent on `first` (preferred) then, after a SIGKILL of `first`, on `second`. A watcher on
    `second` (a cluster routes every node's messages to it); with `watch_first`, one on `first` too
    (two separate brokers: what reached `first` before it died is counted there)."""
    watchers = [Watcher(second.mqtt_port, pki_dir, "edison/%s/#" % DEVICE)]
    if watch_first:
        watchers.append(Watcher(first.mqtt_port, pki_dir, "edison/%s/#" % DEVICE))
    time.sleep(1.0)
    agent = run_agent(base, pki_dir, ["127.0.0.1:%d" % first.mqtt_port, "localhost:%d" % second.mqtt_port],
                      protocol)
    try:
        time.sleep(RUN_BEFORE_KILL)
        status = "edison/%s/status" % DEVICE
        retained = {"on the node in use": retained_seen(first.mqtt_port, pki_dir, status),
                    "on the other node": retained_seen(second.mqtt_port, pki_dir, status)}
        first.kill()
        time.sleep(RUN_AFTER_KILL)
        agent.send_signal(signal.SIGTERM)
        rc = agent.wait(30)
        time.sleep(2.0)
    finally:
        if agent.poll() is None:
            agent.kill()
        for w in watchers:
            w.close()
    lines = (base / "agent.log").read_text(errors="replace").splitlines()
    stopped = [line for line in lines if "stopped: " in line]
    delivered = int(stopped[0].split("stopped: ")[1].split()[0]) if stopped else -1
    every = [seq for w in watchers for seq in w.seqs]
    seen = set(every)
    lost = [_stamp(line) for line in lines if "connection lost" in line]
    moved = [_stamp(line) for line in lines if "connected to localhost:%d" % second.mqtt_port in line]
    missing = sorted(set(range(1, delivered + 1)) - seen)
    return {
        "scenario": name, "agent_exit": rc, "readings_delivered": delivered, "seqs_seen": len(seen),
        "missing": len(missing), "missing_first": missing[:10], "duplicates": len(every) - len(seen),
        "moved_to_other_node": bool(moved), "retained_status_seen": retained,
        "loss_to_reconnect_s": round(moved[0] - lost[0], 2) if moved and lost else None,
    }


def main() -> int:
    if not (RABBIT_BIN / "rabbitmq-server").exists() or shutil.which("mosquitto") is None:
        print("make test-brokers needs Debian's rabbitmq-server and mosquitto: "
              "apt-get install rabbitmq-server mosquitto mosquitto-clients", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="edison-test-brokers-"))
    pki_dir = base / "pki"
    pki.init_ca(pki_dir)
    broker_cert = pki.issue_broker(pki_dir, "localhost", ips=["127.0.0.1"])
    pki.issue_device(pki_dir, DEVICE)
    pki.issue_device(pki_dir, "monitor")
    results: List[Dict[str, Any]] = []
    wrong: List[Any] = []
    cookie_home = base / "home"
    cookie_home.mkdir()
    (cookie_home / ".erlang.cookie").write_text("edisonagenttestbrokers")
    (cookie_home / ".erlang.cookie").chmod(0o400)
    env = dict(os.environ, HOME=str(cookie_home), ERL_EPMD_PORT=str(free_port()))
    nodes = [RabbitNode(base, "rabbit%d" % i, env, pki_dir / "ca.crt", broker_cert.cert_file, broker_cert.key_file)
             for i in (1, 2)]
    try:
        began = time.monotonic()
        for node in nodes:
            node.start()
        nodes[1].ctl("stop_app")
        nodes[1].ctl("join_cluster", nodes[0].name)
        nodes[1].ctl("start_app")
        nodes[1].ctl("await_startup")
        print("cluster of 2 up in %.1f s" % (time.monotonic() - began), file=sys.stderr)
        for user in (DEVICE, "monitor"):
            # What `pki issue-broker --broker rabbitmq` prints to run per device (the monitor reads all).
            nodes[0].ctl("add_user", user, "unused-%s" % user)
            nodes[0].ctl("clear_password", user)
            nodes[0].ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        nodes[0].ctl("set_topic_permissions", "-p", "/", DEVICE, "amq.topic", "^edison\\.%s\\." % DEVICE,
                     "^edison\\.%s\\.cmd\\." % DEVICE)
        # The issue's RabbitMQ findings, through doctor on a real node: MQTT 5 refused by a 3.1.1
        # broker, a CN without a user, a topic the device may not write.
        for user in ("nouser", "restricted"):
            pki.issue_device(pki_dir, user)
        nodes[0].ctl("add_user", "restricted", "unused")
        nodes[0].ctl("clear_password", "restricted")
        nodes[0].ctl("set_permissions", "-p", "/", "restricted", ".*", ".*", ".*")
        nodes[0].ctl("set_topic_permissions", "-p", "/", "restricted", "amq.topic",
                     "^edison\\.restricted\\.(telemetry|health)$", ".*")
        diagnoses = {"mqtt 5 client": doctor(base, pki_dir, nodes[0].mqtt_port, DEVICE, 5),
                     "mqtt 3.1.1 client": doctor(base, pki_dir, nodes[0].mqtt_port, DEVICE, 4),
                     "CN without a user": doctor(base, pki_dir, nodes[0].mqtt_port, "nouser", 4),
                     "status topic not writable": doctor(base, pki_dir, nodes[0].mqtt_port, "restricted", 4)}
        print(json.dumps(diagnoses, indent=2))
        expected = [("mqtt 5 client", "mqtt connect", "this broker speaks MQTT 3.1.1 only"),
                    ("mqtt 3.1.1 client", "publish status", "ok: "),
                    ("CN without a user", "mqtt connect", "the user name is 'nouser' (the certificate's CN)"),
                    ("status topic not writable", "publish status", "closed the connection right after"),
                    ("status topic not writable", "publish telemetry", "ok: ")]
        wrong = [e for e in expected if e[2] not in diagnoses[e[0]].get(e[1], "")]
        rabbit_dir = base / "rabbitmq-run"
        rabbit_dir.mkdir()
        results.append(scenario("rabbitmq 3.10 cluster, node SIGKILL, watcher on the other node", rabbit_dir,
                                pki_dir, nodes[0], nodes[1], 4, watch_first=False))
    finally:
        for node in reversed(nodes):
            node.stop()
        # The nodes started an epmd on our port; it outlives them unless told to go.
        subprocess.run([str(Path("/usr/bin/epmd")), "-kill"], env=env, capture_output=True, timeout=30)
    brokers = [Mosquitto(base, "mosquitto%d" % i, pki_dir / "ca.crt", broker_cert.cert_file, broker_cert.key_file)
               for i in (1, 2)]
    try:
        for b in brokers:
            b.start()
        mosquitto_dir = base / "mosquitto-run"
        mosquitto_dir.mkdir()
        results.append(scenario("two mosquittos, SIGKILL, a watcher on each", mosquitto_dir, pki_dir,
                                brokers[0], brokers[1], 5, watch_first=True))
    finally:
        for b in brokers:
            b.stop()
    print(json.dumps(results, indent=2))
    print("work directory (logs, removed when all passed): %s" % base, file=sys.stderr)
    for e in wrong:
        print("doctor on RabbitMQ, %s: %s did not say %r" % e, file=sys.stderr)
    ok = not wrong and all(r["missing"] == 0 and r["moved_to_other_node"] and r["agent_exit"] == 0
                           and r["readings_delivered"] > 0 for r in results)
    if ok:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
