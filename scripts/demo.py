"""`make demo`: a throwaway CA, a local mutual-TLS mosquitto, the agent on a simulated board,
and telemetry arriving at an independent subscriber for about ten seconds.

Everything it starts, it stops; everything it writes is under ./demo/.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, List, Tuple

import yaml

from agent.tools.pki import authority as pki

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def echo(prefix: str, stream: IO[bytes]) -> None:
    for raw in stream:
        print("%s %s" % (prefix, raw.decode(errors="replace").rstrip()), flush=True)


def start(prefix: str, argv: List[str], **kwargs: object) -> "subprocess.Popen[bytes]":
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)  # type: ignore
    threading.Thread(target=echo, args=(prefix, proc.stdout), daemon=True).start()
    return proc  # type: ignore[no-any-return]


def wait_listening(port: int, proc: "subprocess.Popen[bytes]") -> None:
    # Read the kernel's socket table rather than probing: a probe shows up in the broker's
    # log as a failed TLS connection and confuses the demo's reader.
    wanted = ":%04X " % port
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("demo: mosquitto exited; see its lines above")
        with open("/proc/net/tcp") as table:
            if any(wanted in line and line.split()[3] == "0A" for line in table):
                return
        time.sleep(0.05)
    raise SystemExit("demo: mosquitto is not listening on 127.0.0.1:%d" % port)


def make_certificates() -> Path:
    certs = DEMO / "certs"
    for stale in (certs, DEMO / "state"):
        if stale.exists():
            shutil.rmtree(stale)
    print("== certificates (edison-agent pki) ==", flush=True)
    pki.init_ca(certs, name="edison-agent demo CA")
    pki.issue_broker(certs, "localhost", ips=["127.0.0.1"])
    pki.issue_device(certs, "thunder10")
    pki.issue_device(certs, "monitor")
    for path in sorted(certs.iterdir()):
        print("   %s (mode %04o)" % (path.relative_to(ROOT), path.stat().st_mode & 0o777), flush=True)
    return certs


def write_configs(certs: Path, port: int) -> Tuple[Path, Path]:
    broker_conf = DEMO / "mosquitto.conf"
    broker_conf.write_text("\n".join([
        # mosquitto started as root switches to its own user before reading the 0600 key.
        "user %s" % getpass.getuser(),
        "persistence false",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        pki.mosquitto_listener(certs / "ca.crt", certs / "localhost.crt", certs / "localhost.key",
                               port=port, address="127.0.0.1"),
        "",
    ]))
    agent_conf = DEMO / "config.yaml"
    agent_conf.write_text(yaml.safe_dump({
        "device": {"id": "thunder10"},
        "mqtt": {"host": "localhost", "port": port, "client_id": "thunder10",
                 "reconnect": {"min_delay": 1, "max_delay": 10},
                 "tls": {"ca_file": "certs/ca.crt", "cert_file": "certs/thunder10.crt",
                         "key_file": "certs/thunder10.key", "min_version": "1.2"}},
        "board": "simulated",
        # The demo's own spool, not the service's /var/lib/edison-agent.
        "state_dir": "state",
        # ... and its own health file (`edison-agent status --file demo/state/health.json`).
        "health": {"file": "state/health.json"},
        "sensors": [
            {"name": "temperature", "type": "analog", "pin": 0, "interval": 2, "scale": 0.4883,
             "offset": -50, "unit": "degC", "filter": {"median": 3}},
            {"name": "room", "type": "bme280", "interval": 2, "phase": 0.5},
            {"name": "light", "type": "bh1750", "interval": 2, "phase": 1.0, "deadband": {"pct": 5}},
            {"name": "door", "type": "digital", "pin": 4, "interval": 1, "deadband": {"max_silence": 10}},
            {"name": "wind", "type": "counter", "pin": 7, "report": "rate", "per_pulse": 2.4,
             "unit": "km/h", "interval": 5},
            {"name": "load", "type": "system", "metric": "load1", "interval": 5},
        ],
    }, sort_keys=False))
    return broker_conf, agent_conf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    DEMO.mkdir(exist_ok=True)
    certs = make_certificates()
    port = free_port(8883)
    broker_conf, agent_conf = write_configs(certs, port)
    procs: List["subprocess.Popen[bytes]"] = []
    try:
        print("== mosquitto on 127.0.0.1:%d, require_certificate true ==" % port, flush=True)
        broker = start("broker     |", ["mosquitto", "-c", str(broker_conf)])
        procs.append(broker)
        wait_listening(port, broker)
        procs.append(start("subscriber |", [
            "mosquitto_sub", "-h", "localhost", "-p", str(port), "--cafile", str(certs / "ca.crt"),
            "--cert", str(certs / "monitor.crt"), "--key", str(certs / "monitor.key"),
            "-q", "1", "-v", "-t", "edison/#"]))
        time.sleep(0.5)
        subprocess.run([sys.executable, "-m", "agent", "check-config", "-c", str(agent_conf)], check=True)
        print("== the agent, for %.0f seconds ==" % args.seconds, flush=True)
        agent = start("agent      |", [sys.executable, "-m", "agent", "run", "-c", str(agent_conf)],
                      env=dict(os.environ, PYTHONUNBUFFERED="1"))
        procs.append(agent)
        time.sleep(args.seconds)
        print("== SIGTERM to the agent: it delivers what is in flight and goes offline ==", flush=True)
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(15)
        time.sleep(0.5)
        print("== agent exited with %d; stopping the broker and the subscriber ==" % code, flush=True)
        return code
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    sys.exit(main())
