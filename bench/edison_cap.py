"""`make bench-edison`: the agent as installed on a board, in a 32-bit i386 user land, on an
Edison-sized CPU: a cgroup v1 cpu cap of 1/29.5 of a core (the estimate of docs/performance.md,
bench/edison.py), on one core and on two.

    python bench/edison_cap.py [--window S] [--cores 1,2] [--quota US] [--out FILE]

Measured, per core count: start to READY (sd_notify) and to the first reading at a subscriber
with 10 and 200 sensors; the CPU share of a typical board (10 sensors at 1-10 s), of W1 (200
sensors at 1 s) with the default batching and with `{max_readings: 50, max_delay: 1}`, and W1's
lag (reading timestamp to arrival); idle CPU per minute (1 sensor every 10 s); peak RSS; TLS
connect CPU and wall, full ECDSA and the founding post's RSA-2048, and resumed; whether the
running agent resumes its TLS session on a reconnect. Writes bench/edison-cap.json.

How: the root of `make test-i386` (tests/i386/root.sh) under an overlay, the agent installed
as docs/operations.md says (a venv with --system-site-packages, pip install of this checkout),
run with chroot in this machine's network namespace. The broker and the subscriber run outside
the cap, on the host. The cap is a quota per 100 ms period: short bursts run at host speed, so
read the connect figures as CPU x 29.5, not as wall. Not part of CI (minutes, and root).
"""

from __future__ import annotations

import argparse
import json
import os
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
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import procstat  # noqa: E402  (bench/procstat.py: /proc snapshots and windows)
import rig  # noqa: E402  (bench/rig.py: broker, subscriber)
from edison_box import AGENT, AGENT_PY, CPU_CG, PERIOD_US, Cap, cleanup, prepare_root  # noqa: E402

from agent.tools.pki import authority as pki  # noqa: E402

# 100 ms / 29.5: the Edison estimate of docs/performance.md.
QUOTA_US = 3390


def sensors(count: int, intervals: List[float]) -> List[Dict[str, Any]]:
    return [{"name": "s%03d" % i, "type": "analog", "pin": i % 6, "interval": intervals[i % len(intervals)],
             "unit": "degC"} for i in range(count)]


class LagSubscriber(rig.Subscriber):
    """rig.Subscriber, plus each reading's lag: arrival minus the reading's own timestamp."""

    def __init__(self, port: int, ec: Dict[str, Path]) -> None:
        self.lags: List[float] = []
        self.first_at: Optional[float] = None
        super().__init__(port, ec)

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.time()
        readings = json.loads(msg.payload)["readings"]
        with self.lock:
            self.lags.extend(now - r["ts"] for r in readings)
            if self.first_at is None:
                self.first_at = time.monotonic()
        super()._message(client, userdata, msg)

    def reset(self) -> None:
        with self.lock:
            self.lags, self.first_at = [], None


class Bench:
    def __init__(self, work: Path, merged: Path, ec: Dict[str, Path], rsa: Dict[str, Path], broker: rig.Broker,
                 sub: LagSubscriber) -> None:
        self.work, self.merged, self.ec, self.rsa, self.broker, self.sub = work, merged, ec, rsa, broker, sub
        self.n = 0
        self.quota_us = QUOTA_US

    def config(self, sensor_list: List[Dict[str, Any]], batch: Optional[Dict[str, Any]] = None) -> Path:
        self.n += 1
        d = self.work / ("agent%d" % self.n)
        (d / "state").mkdir(parents=True)
        cfg: Dict[str, Any] = {
            "device": {"id": rig.DEVICE},
            "mqtt": {"host": "localhost", "port": self.broker.port, "client_id": "%s-%d" % (rig.DEVICE, self.n),
                     "tls": {"ca_file": str(self.ec["ca"]), "cert_file": str(self.ec["device_cert"]),
                             "key_file": str(self.ec["device_key"])}},
            "board": "simulated", "log_level": "info", "state_dir": str(d / "state"),
            "health": {"file": str(d / "state" / "health.json")}, "sensors": sensor_list}
        if batch:
            cfg["batch"] = batch
        path = d / "config.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def start(self, cap: Cap, cfg: Path) -> "Tuple[subprocess.Popen[bytes], rig.NotifySocket, float]":
        notify = rig.NotifySocket(cfg.parent / "notify.sock")
        log = open(cfg.parent / "agent.log", "wb")
        started = time.monotonic()
        proc = subprocess.Popen(
            ["setarch", "i686", "chroot", str(self.merged), "env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8",
             "NOTIFY_SOCKET=%s" % notify.path, AGENT, "run", "-c", str(cfg)],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=cap.join)
        log.close()
        return proc, notify, started

    @staticmethod
    def stop(proc: "subprocess.Popen[bytes]") -> None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def startup(self, cap: Cap, count: int) -> Dict[str, Any]:
        self.sub.reset()
        proc, notify, started = self.start(cap, self.config(sensors(count, [1.0])))
        try:
            deadline = time.monotonic() + 120
            while (notify.ready_at is None or self.sub.first_at is None) and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            self.stop(proc)
        ready, first = notify.ready_at, self.sub.first_at
        return {"sensors": count, "ready_s": None if ready is None else ready - started,
                "first_reading_s": None if first is None else first - started}

    def steady(self, cap: Cap, sensor_list: List[Dict[str, Any]], batch: Optional[Dict[str, Any]], warm: float,
               window: float) -> Dict[str, Any]:
        proc, notify, _ = self.start(cap, self.config(sensor_list, batch))
        try:
            deadline = time.monotonic() + 120
            while self.sub.first_at is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(warm)
            # Windows that start and end between two bursts of readings hold whole bursts.
            rig.wait_quiet(lambda: self.sub.snapshot()[0])
            self.sub.reset()
            r0, m0, _ = self.sub.snapshot()
            before = procstat.usage(proc.pid)
            time.sleep(window)
            rig.wait_quiet(lambda: self.sub.snapshot()[0])
            r1, m1, _ = self.sub.snapshot()
            spent = procstat.Window(before, procstat.usage(proc.pid))
            hwm = procstat.status_kib(proc.pid, "VmHWM")
            with self.sub.lock:
                lags = sorted(self.sub.lags)
        finally:
            self.stop(proc)
        wall = spent.wall_s
        expected = sum(wall / s["interval"] for s in sensor_list)
        # One Edison core is quota/period of a host core: the share of it is the host share over that.
        # schedstat (ns resolution): clock ticks are 10 ms, too coarse for an idle agent.
        edison_core = self.quota_us / PERIOD_US
        return {"share_of_an_edison_core": spent.sched_cpu_s / wall / edison_core,
                "host_cpu_ms_per_min": 1000 * 60 * spent.sched_cpu_s / wall,
                "readings": r1 - r0, "expected_readings": round(expected), "messages": m1 - m0,
                "lag_p50_s": statistics.median(lags) if lags else None,
                "lag_p90_s": lags[int(0.9 * (len(lags) - 1))] if lags else None,
                "peak_rss_mib": hwm / 1024.0}

    def connects(self, cap: Cap, count: int) -> Dict[str, Any]:
        ec, rsa = self.ec, self.rsa
        variants = [
            {"name": "agent ClientContext, full (ECDSA, TLS 1.3)", "port": self.broker.port, "ca": str(ec["ca"]),
             "cert": str(ec["device_cert"]), "key": str(ec["device_key"]), "tls12": False, "resume": False,
             "agent": True},
            {"name": "agent ClientContext, resumed", "port": self.broker.port, "ca": str(ec["ca"]),
             "cert": str(ec["device_cert"]), "key": str(ec["device_key"]), "tls12": False, "resume": True,
             "agent": True},
            {"name": "RSA-2048, TLS 1.2 (the founding post)", "port": self.broker.rsa_port, "ca": str(rsa["ca"]),
             "cert": str(rsa["device_cert"]), "key": str(rsa["device_key"]), "tls12": True, "resume": False},
        ]
        argv = ["setarch", "i686", "chroot", str(self.merged), "env", "-i", "PATH=/usr/bin:/bin",
                AGENT_PY, "/src/bench/clients.py", "connect", "--port", str(self.broker.port), "--ca", str(ec["ca"]),
                "--cert", str(ec["device_cert"]), "--key", str(ec["device_key"]), "--count", str(count),
                "--variants", json.dumps(variants)]
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=900,
                             preexec_fn=cap.join).stdout
        raw = json.loads(out.strip().splitlines()[-1])
        return {name: {"n": len(r["wall"]), "cpu_ms_median": 1e3 * statistics.median(r["cpu"]),
                       "wall_ms_median": 1e3 * statistics.median(r["wall"]),
                       "resumed_fraction": sum(r["reused"]) / len(r["reused"])} for name, r in raw.items()}

    def imports(self, cap: Cap) -> Dict[str, Any]:
        """`python -X importtime` of what `edison-agent run` imports, under the cap: the top costs."""
        argv = ["setarch", "i686", "chroot", str(self.merged), "env", "-i", "PATH=/usr/bin:/bin",
                AGENT_PY, "-X", "importtime", "-c", "import agent.cli, agent.service.daemon"]
        started = time.monotonic()
        err = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300,
                             preexec_fn=cap.join).stderr
        wall = time.monotonic() - started
        rows = []
        for line in err.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                rows.append((int(parts[1]), int(parts[0].split(":")[1]), parts[2].rstrip()))
        total = sum(own for _, own, _ in rows)
        top = sorted(rows, reverse=True)[:15]
        return {"interpreter_and_imports_wall_s": wall, "imports_s": total / 1e6,
                "top_cumulative_ms": {name.strip(): round(cum / 1e3) for cum, _, name in top}}

    def resumes(self, cap: Cap) -> Dict[str, Any]:
        """The running agent loses its connection (another client takes its client id) and reconnects."""
        cfg = self.config(sensors(1, [1.0]))
        proc, _, _ = self.start(cap, cfg)
        log = cfg.parent / "agent.log"
        lines: List[str] = []
        try:
            self._wait_log(log, "connected to", 60)
            for _ in range(3):
                mark = len(log.read_text().splitlines())
                self._intruder("%s-%d" % (rig.DEVICE, self.n))
                lines.append(self._wait_log(log, "again", 60, after=mark) or "")
                time.sleep(1)
        finally:
            self.stop(proc)
        return {"reconnects": len(lines), "resumed": sum("resumed TLS session" in line for line in lines),
                "log_lines": lines}

    def _intruder(self, client_id: str) -> None:
        import ssl

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        ctx = ssl.create_default_context(cafile=str(self.ec["ca"]))
        ctx.load_cert_chain(str(self.ec["device_cert"]), str(self.ec["device_key"]))
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        c.tls_set_context(ctx)
        done = threading.Event()
        c.on_connect = lambda *x: done.set()
        c.connect("localhost", self.broker.port)
        c.loop_start()
        done.wait(10)
        c.disconnect()
        c.loop_stop()

    @staticmethod
    def _wait_log(path: Path, text: str, timeout: float, after: int = 0) -> Optional[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in path.read_text(errors="replace").splitlines()[after:]:
                if text in line:
                    return line
            time.sleep(0.1)
        return None


def measure(bench: Bench, cap: Cap, key: str, args: argparse.Namespace) -> Dict[str, Any]:
    steps: List[Tuple[str, Callable[[], Any]]] = [
        ("startup_10", lambda: bench.startup(cap, 10)),
        ("startup_200", lambda: bench.startup(cap, 200)),
        ("imports", lambda: bench.imports(cap)),
        ("typical_10_sensors_1_to_10_s", lambda: bench.steady(cap, sensors(10, [1, 2, 5, 10]), None, 10,
                                                              args.window)),
        ("w1_default", lambda: bench.steady(cap, sensors(200, [1]), None, 5, args.window)),
        # As the agent did by default before issue 17: the issue's "default (one reading a message)" row.
        ("w1_one_reading_a_message", lambda: bench.steady(cap, sensors(200, [1]), {"max_readings": 1}, 5,
                                                          args.window)),
        ("w1_batched_50_1s", lambda: bench.steady(cap, sensors(200, [1]), {"max_readings": 50, "max_delay": 1}, 5,
                                                  args.window)),
        ("idle_1_sensor_10_s", lambda: bench.steady(cap, sensors(1, [10]), None, 10, args.window)),
        ("connects", lambda: bench.connects(cap, args.connects)),
        ("agent_resumes", lambda: bench.resumes(cap)),
    ]
    r: Dict[str, Any] = {}
    for name, step in steps:
        if args.only and name not in args.only.split(","):
            continue
        print("bench-edison: %s, %s" % (key, name), flush=True)
        r[name] = step()
        print("  %s" % json.dumps(r[name]), flush=True)
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window", type=float, default=60.0, help="seconds of each steady-state window")
    p.add_argument("--cores", default="1,2")
    p.add_argument("--quota", type=int, default=QUOTA_US, help="cpu.cfs_quota_us per core per 100 ms")
    p.add_argument("--connects", type=int, default=20)
    p.add_argument("--only", default="", help="steps to run, e.g. startup_10,w1_default (default: all)")
    p.add_argument("--out", default=str(ROOT / "bench" / "edison-cap.json"))
    args = p.parse_args()
    if os.getuid() != 0:
        raise SystemExit("bench-edison: needs root (chroot, cgroups, mounts)")
    if not (CPU_CG / "cpu.cfs_quota_us").exists():
        raise SystemExit("bench-edison: no cgroup v1 cpu controller at %s" % CPU_CG)
    if os.environ.get("EDISON_BENCH_NS") != "1":
        # Every mount below lives in a private mount namespace and goes with it.
        os.environ["EDISON_BENCH_NS"] = "1"
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private",  # noqa: S606 - fixed argv
                              sys.executable, *sys.argv])
    results: Dict[str, Any] = {"quota_us_per_core": args.quota, "period_us": PERIOD_US, "window_s": args.window,
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    work = Path(tempfile.mkdtemp(prefix="edison-cap-", dir="/var/tmp"))
    try:
        merged = prepare_root(work)
        ecd = work / "pki"
        pki.init_ca(ecd, name="bench CA")
        b = pki.issue_broker(ecd, "localhost", ips=["127.0.0.1"])
        device = pki.issue_device(ecd, rig.DEVICE)
        monitor = pki.issue_device(ecd, "monitor")
        ec = {"ca": ecd / "ca.crt", "broker_cert": b.cert_file, "broker_key": b.key_file,
              "device_cert": device.cert_file, "device_key": device.key_file,
              "monitor_cert": monitor.cert_file, "monitor_key": monitor.key_file}
        rsa = rig.rsa_pki(work / "rsa")
        broker = rig.Broker(work, ec, rsa)
        sub = LagSubscriber(broker.port, ec)
        bench = Bench(work, merged, ec, rsa, broker, sub)
        bench.quota_us = args.quota
        try:
            for cores in [int(c) for c in args.cores.split(",")]:
                cap = Cap(cores, args.quota)
                key = "%d core%s" % (cores, "" if cores == 1 else "s")
                try:
                    r = measure(bench, cap, key, args)
                finally:
                    cap.close()
                results[key] = r
        finally:
            sub.stop()
            broker.stop()
    finally:
        cleanup(work)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print("bench-edison: wrote %s" % args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
