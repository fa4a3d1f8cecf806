"""The agent and its peers on the same work: W1 and idle (issue 7, `make bench-peers`).

    python bench/peers.py [--rounds 2] [--window 20] [--idle-window 30] [--out bench/peers.json]

Peers (installed by `make bench-peers`, checked here):
  mqtt-io   flyte/mqtt-io 2.7.0 from PyPI, in its own venv (bench/.peers-venv), its `mock`
            sensor module (the only one that needs no hardware), sensor readings at QoS 0:
            mqtt-io publishes sensor readings with no QoS setting (MQTTMessageSend's default 0)
  collectd  collectd 5.12 (Debian's collectd-core): the `table` plugin reads a file of one
            row per sensor once per interval (the way collectd reads /proc or /sys), the
            `mqtt` plugin publishes each value at QoS 1

Workloads, every process against the bench's own mutual-TLS mosquitto (bench/rig.py's
Broker, the same ECDSA P-256 certificates as the agent):
  W1    200 simulated sensors read once a second: a warm-up, then a --window s window that
        starts and ends between two bursts of readings where there are such gaps: process
        CPU (schedstat of every thread, ns resolution; the 10 ms ticks of /proc/<pid>/stat
        are kept as a cross-check, too coarse for collectd's ~0.06 s per window) over the
        readings counted by an independent QoS 1 subscriber in the same window; peak RSS
        (VmHWM); wake-ups/s (voluntary context switches summed over the threads). The agent
        runs it with its default batching (one message per wake-up) and batched
        (batch.max_readings 10, max_delay 1 s), through run.py's measure_agent.
  idle  one sensor every 10 s, all three processes side by side for --idle-window s:
        wake-ups/s over all threads, CPU per minute (schedstat, ns resolution).
Rounds are interleaved (agent, mqtt-io, collectd, rotated each round); figures are medians.
The peers' generated configs (bench/peer_procs.py) are kept in bench/peers-configs/ (and their
paths are in the JSON) so anyone can read exactly what ran.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import paho.mqtt.client as mqtt  # noqa: E402
import procstat  # noqa: E402  (bench/procstat.py: /proc snapshots and windows)
import report  # noqa: E402  (bench/report.py: the machine)
import rig  # noqa: E402  (bench/rig.py: broker, subscriber, the agent as a process)
import run  # noqa: E402  (bench/run.py: the agent's W1 path)
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from peer_procs import (  # noqa: E402
    COLLECTD_PREFIX,
    CONFIGS,
    MQTT_IO_PREFIX,
    PEERS_VENV,
    PeerProc,
    mqtt_io_python,
    start_peer,
)
from rig import ROOT, Env  # noqa: E402

from agent.tools.pki import authority as pki  # noqa: E402

SENSORS = 200
# mqtt-io with its default logging (one INFO line per reading): context, measured once on request.
MQTT_IO_STOCK = "mqtt-io INFO log"
# Each peer sends one reading per message; these filters leave out mqtt-io's status topic.
FILTERS = {"mqtt-io": MQTT_IO_PREFIX + "/sensor/+", "collectd": COLLECTD_PREFIX + "/#"}
# The issue's figures for the peers (FIELD-NOTES), printed next to this run's for context.
ISSUE = {"mqtt-io": {"us_per_reading": 400, "idle_wakeups_per_s": 2.5, "vmhwm_mib": 40},
         "collectd": {"us_per_reading": 50, "idle_wakeups_per_s": 0.33, "vmhwm_mib": 7.5}}


# -- the independent subscriber for the peers' topics -------------------------------------

class PeerCounter:
    """QoS 1 subscriber counting messages per peer (each peer sends one reading per message)."""

    def __init__(self, port: int, ec: Dict[str, Path]) -> None:
        import ssl
        ctx = ssl.create_default_context(cafile=str(ec["ca"]))
        ctx.load_cert_chain(str(ec["monitor_cert"]), str(ec["monitor_key"]))
        self.lock = threading.Lock()
        self.counts = {name: 0 for name in FILTERS}
        self.payload: Dict[str, bytes] = {}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-peer-monitor", protocol=mqtt.MQTTv311)
        c.tls_set_context(ctx)
        ready = threading.Event()
        c.on_connect = lambda cl, *a: cl.subscribe([(f, 1) for f in FILTERS.values()])
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._message
        c.connect("localhost", port)
        c.loop_start()
        if not ready.wait(10):
            raise SystemExit("bench-peers: the counting subscriber did not subscribe")
        self.client = c

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        for name, f in FILTERS.items():
            if mqtt.topic_matches_sub(f, msg.topic):
                with self.lock:
                    self.counts[name] += 1
                    self.payload[name] = msg.payload
                return

    def count(self, name: str) -> int:
        with self.lock:
            return self.counts[name]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_readings(counter: PeerCounter, p: PeerProc, want: int, timeout: float = 60.0) -> None:
    """Until the subscriber has seen `want` of this peer's readings (it has connected and is reading)."""
    start = counter.count(p.name)
    deadline = time.monotonic() + timeout
    while counter.count(p.name) - start < want:
        p.check()
        if time.monotonic() > deadline:
            raise SystemExit("bench-peers: no readings from %s in %.0f s:\n%s"
                             % (p.name, timeout, p.log_path.read_text()[-3000:]))
        time.sleep(0.1)


def measure_peer_w1(env: Env, counter: PeerCounter, name: str, warm: float, window: float,
                    tag: str, stock_log: bool = False) -> Dict[str, Any]:
    p = start_peer(env, name, SENSORS, 1, tag, stock_log)
    try:
        wait_readings(counter, p, SENSORS)
        time.sleep(warm)
        p.check()
        rig.wait_quiet(lambda: counter.count(name))
        r0 = counter.count(name)
        before = procstat.usage(p.pid)
        time.sleep(window)
        rig.wait_quiet(lambda: counter.count(name))
        r1 = counter.count(name)
        spent = procstat.Window(before, procstat.usage(p.pid))
        hwm = procstat.status_kib(p.pid, "VmHWM")
        p.check()
    finally:
        p.stop()
    readings = r1 - r0
    return {"cpu_s": spent.cpu_s, "sched_cpu_s": spent.sched_cpu_s, "wall_s": spent.wall_s, "acked": readings,
            "us_per_reading": 1e6 * spent.sched_cpu_s / max(1, readings),
            "us_per_reading_ticks": 1e6 * spent.cpu_s / max(1, readings), "threads": spent.threads,
            "vmhwm_kib": hwm, "wakeups_per_s": spent.wakeups / spent.wall_s,
            "wakeups_per_reading": spent.wakeups / max(1, readings)}


def measure_agent_w1(env: Env, batched: bool, warm: float, window: float) -> Dict[str, Any]:
    sensors = [{"name": "s%03d" % i, "type": "analog", "pin": i % 6, "interval": 1, "unit": "degC"}
               for i in range(SENSORS)]
    r = run.measure_agent(env, sensors, {"max_readings": 10, "max_delay": 1} if batched else None, warm, window,
                          between_bursts=True)
    # The same clock as the peers': schedstat, not /proc/<pid>/stat's 10 ms ticks (collectd
    # spends ~0.06 s of CPU in a window: six ticks).
    r["us_per_reading_ticks"] = r["us_per_reading"]
    r["us_per_reading"] = 1e6 * r["sched_cpu_s"] / max(1, r["acked"])
    r["wakeups_per_s"] = r["wakeups"] / r["wall_s"]
    r["wakeups_per_reading"] = r["wakeups"] / max(1, r["acked"])
    return r


def idle(env: Env, counter: PeerCounter, window: float) -> Dict[str, Dict[str, Any]]:
    """One sensor every 10 s; the agent (watchdog on, as under systemd), mqtt-io and collectd
    side by side: their idle loads are too small to disturb each other."""
    notify = rig.NotifySocket(env.work / "peers-notify.sock")
    agent = rig.AgentProc(rig.agent_config(env, [{"name": "temperature", "type": "analog", "pin": 0,
                                                   "interval": 10, "unit": "degC"}]),
                          {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "30000000"})
    peers = [start_peer(env, name, 1, 10, "idle") for name in ("mqtt-io", "collectd")]
    try:
        agent.wait_connected()
        for p in peers:
            wait_readings(counter, p, 1)
        time.sleep(2.0)
        pids = {"agent": agent.pid, **{p.name: p.pid for p in peers}}
        before = {k: procstat.usage(pid) for k, pid in pids.items()}
        r0 = {p.name: counter.count(p.name) for p in peers}
        time.sleep(window)
        out = {}
        for k, pid in pids.items():
            spent = procstat.Window(before[k], procstat.usage(pid))
            out[k] = {"window_s": spent.wall_s, "wakeups_per_s": spent.wakeups / spent.wall_s,
                      "cpu_ms_per_min": spent.sched_cpu_s * 1e3 * 60 / spent.wall_s, "threads": spent.threads,
                      "vmhwm_kib": procstat.status_kib(pid, "VmHWM")}
        for p in peers:
            p.check()
            out[p.name]["readings"] = counter.count(p.name) - r0[p.name]
    finally:
        agent.stop()
        for p in peers:
            p.stop()
        notify.sock.close()
    return out


# -- versions, summary, table -------------------------------------------------------------

def versions() -> Dict[str, str]:
    out = {}
    out["mqtt-io"] = subprocess.run([str(mqtt_io_python()), "-c",
                                     "import importlib.metadata as m; print('mqtt-io', m.version('mqtt-io'), "
                                     "'aiomqtt', m.version('aiomqtt'), 'paho-mqtt', m.version('paho-mqtt'))"],
                                    capture_output=True, text=True).stdout.strip()
    out["mqtt-io python"] = subprocess.run([str(mqtt_io_python()), "--version"], capture_output=True,
                                           text=True).stdout.strip()
    out["collectd"] = subprocess.run(["dpkg-query", "-W", "-f", "collectd-core ${Version}", "collectd-core"],
                                     capture_output=True, text=True).stdout.strip()
    out["libmosquitto (collectd's mqtt plugin)"] = subprocess.run(
        ["dpkg-query", "-W", "-f", "libmosquitto1 ${Version}", "libmosquitto1"], capture_output=True,
        text=True).stdout.strip()
    out["agent paho-mqtt"] = importlib.metadata.version("paho-mqtt")
    return out


def med(runs: List[Dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def summarise(w1: Dict[str, List[Dict[str, Any]]], idle_runs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    s: Dict[str, Any] = {}
    for k, runs in w1.items():
        s[k] = {"us_per_reading": med(runs, "us_per_reading"),
                "us_per_reading_ticks": med(runs, "us_per_reading_ticks"),
                "readings_per_s": med(runs, "acked") / med(runs, "wall_s"),
                "vmhwm_mib": max(r["vmhwm_kib"] for r in runs) / 1024, "wakeups_per_s": med(runs, "wakeups_per_s"),
                "threads": max(r["threads"] for r in runs),
                "rounds_us_per_reading": [round(r["us_per_reading"], 1) for r in runs]}
    for k, r in idle_runs.items():
        s.setdefault(k, {}).update({"idle_wakeups_per_s": r["wakeups_per_s"],
                                    "idle_cpu_ms_per_min": r["cpu_ms_per_min"], "idle_threads": r["threads"],
                                    "idle_vmhwm_mib": r["vmhwm_kib"] / 1024})
    for k in ("agent default", "agent batched"):
        if k in s and "agent" in idle_runs:
            s[k]["idle_wakeups_per_s"] = idle_runs["agent"]["wakeups_per_s"]
            s[k]["idle_cpu_ms_per_min"] = idle_runs["agent"]["cpu_ms_per_min"]
    return s


def targets(s: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    t: Dict[str, Dict[str, Any]] = {}

    def add(name: str, ratio: float, limit: float, strict: bool) -> None:
        t[name] = {"ratio": ratio, "limit": limit, "met": ratio < limit if strict else ratio <= limit}

    if "agent batched" in s and "collectd" in s:
        add("W1 batched CPU/reading <= collectd's (agent/collectd <= 1)",
            s["agent batched"]["us_per_reading"] / s["collectd"]["us_per_reading"], 1.0, False)
    if "agent default" in s and "mqtt-io" in s:
        add("W1 default CPU/reading <= 0.25 x mqtt-io's (agent/mqtt-io <= 0.25)",
            s["agent default"]["us_per_reading"] / s["mqtt-io"]["us_per_reading"], 0.25, False)
        peak = max(s[k]["vmhwm_mib"] for k in ("agent default", "agent batched") if k in s)
        add("agent peak RSS (W1) below mqtt-io's (agent/mqtt-io < 1)", peak / s["mqtt-io"]["vmhwm_mib"], 1.0, True)
    if "agent" in s and "collectd" in s and "idle_wakeups_per_s" in s["collectd"]:
        mine, theirs = s["agent"]["idle_wakeups_per_s"], s["collectd"]["idle_wakeups_per_s"]
        # A window too short to see either wake (both 0) shows nothing, so it does not count as fewer.
        add("idle wake-ups/s fewer than collectd's (agent/collectd < 1)",
            mine / theirs if theirs else (float("inf") if mine else 1.0), 1.0, True)
    return t


def table(res: Dict[str, Any]) -> str:
    s = res["summary"]
    lines = ["", "W1: %d sensors once a second, %g s window, median of %d round(s); idle: 1 sensor every 10 s, %g s"
             % (SENSORS, res["window_s"], res["rounds"], res["idle_window_s"]),
             "%-16s %10s %10s %9s %8s %9s %12s %12s   %s" % ("process", "us/reading", "readings/s", "RSS MiB",
                                                           "wakeup/s", "threads", "idle wake/s", "idle ms/min",
                                                           "rounds (us/reading)")]
    for k in ("agent default", "agent batched", "mqtt-io", "collectd", MQTT_IO_STOCK):
        if k not in s or "us_per_reading" not in s[k]:
            continue
        v = s[k]
        lines.append("%-16s %10.1f %10.1f %9.1f %8.1f %9d %12s %12s   %s" % (
            k, v["us_per_reading"], v["readings_per_s"], v["vmhwm_mib"], v["wakeups_per_s"], v["threads"],
            "%.2f" % v["idle_wakeups_per_s"] if "idle_wakeups_per_s" in v else "-",
            "%.1f" % v["idle_cpu_ms_per_min"] if "idle_cpu_ms_per_min" in v else "-",
            ", ".join(str(x) for x in v["rounds_us_per_reading"])))
    if "agent" in s:
        lines.append("agent idle: %.1f MiB peak RSS, %d threads"
                     % (s["agent"]["idle_vmhwm_mib"], s["agent"]["idle_threads"]))
    lines.append("")
    for name, t in res["targets"].items():
        lines.append("%-72s %6.2f  %s" % (name, t["ratio"], "met" if t["met"] else "NOT met"))
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------

def check_peers() -> None:
    missing = []
    if not mqtt_io_python().exists() or subprocess.run([str(mqtt_io_python()), "-c", "import mqtt_io"],
                                                       capture_output=True).returncode != 0:
        missing.append("mqtt-io (%s -m pip install mqtt-io==2.7.0, after python3 -m venv %s)"
                       % (mqtt_io_python(), PEERS_VENV))
    if shutil.which("collectd") is None or not Path("/usr/lib/collectd/mqtt.so").exists():
        missing.append("collectd (apt-get install collectd-core)")
    if shutil.which("mosquitto") is None:
        missing.append("mosquitto (apt-get install mosquitto)")
    if missing:
        raise SystemExit("bench-peers: missing %s; `make bench-peers` installs them" % "; ".join(missing))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="interleaved W1 rounds (medians)")
    p.add_argument("--window", type=float, default=20.0, help="W1 measuring window, s")
    p.add_argument("--warm", type=float, default=3.0, help="W1 warm-up after the first readings, s")
    p.add_argument("--idle-window", type=float, default=30.0, help="idle measuring window, s")
    p.add_argument("--only", default="agent,mqtt-io,collectd", help="which processes, e.g. collectd")
    p.add_argument("--no-idle", action="store_true")
    p.add_argument("--mqtt-io-info-log", action="store_true",
                   help="also mqtt-io with its default logging (a line per reading), once, in the last round")
    p.add_argument("--out", default=str(BENCH / "peers.json"))
    args = p.parse_args()
    check_peers()
    who = args.only.split(",")
    started = time.monotonic()
    CONFIGS.mkdir(exist_ok=True)
    res: Dict[str, Any] = {"machine": report.machine(), "versions": versions(), "rounds": args.rounds,
                           "window_s": args.window, "idle_window_s": args.idle_window,
                           "configs": str(CONFIGS.relative_to(ROOT))}
    with tempfile.TemporaryDirectory(prefix="edison-peers-") as tmp:
        work = Path(tmp)
        ecd = work / "pki"
        pki.init_ca(ecd, name="bench CA")
        broker_issued = pki.issue_broker(ecd, "localhost", ips=["127.0.0.1"])
        device = pki.issue_device(ecd, rig.DEVICE)
        monitor = pki.issue_device(ecd, "monitor")
        ec = {"ca": ecd / "ca.crt", "broker_cert": broker_issued.cert_file, "broker_key": broker_issued.key_file,
              "device_cert": device.cert_file, "device_key": device.key_file,
              "monitor_cert": monitor.cert_file, "monitor_key": monitor.key_file}
        broker = rig.Broker(work, ec, rig.rsa_pki(work / "rsa"))
        sub = rig.Subscriber(broker.port, ec)
        counter = PeerCounter(broker.port, ec)
        env = Env(work, ec, {}, broker, sub)
        cases: Dict[str, Callable[[int], Dict[str, Any]]] = {}
        if "agent" in who:
            cases["agent default"] = lambda i: measure_agent_w1(env, False, args.warm, args.window)
            cases["agent batched"] = lambda i: measure_agent_w1(env, True, args.warm, args.window)
        for name in ("mqtt-io", "collectd"):
            if name in who:
                cases[name] = (lambda n: lambda i: measure_peer_w1(env, counter, n, args.warm, args.window,
                                                                   "w1"))(name)
        order = list(cases)
        w1: Dict[str, List[Dict[str, Any]]] = {k: [] for k in order}
        if "mqtt-io" in who and args.mqtt_io_info_log:
            w1[MQTT_IO_STOCK] = []
        try:
            for i in range(args.rounds):
                # Rotated each round so the machine's drift spreads over every process.
                rot = order[i % len(order):] + order[:i % len(order)]
                if i == args.rounds - 1 and MQTT_IO_STOCK in w1:
                    rot.append(MQTT_IO_STOCK)
                for k in rot:
                    if k == MQTT_IO_STOCK:
                        r = measure_peer_w1(env, counter, "mqtt-io", args.warm, args.window, "w1-info-log",
                                            stock_log=True)
                    else:
                        r = cases[k](i)
                    w1[k].append(r)
                    print("  round %d %-16s %8.1f us/reading  (%d readings in %.0f s, %.1f MiB, %.1f wake-ups/s, "
                          "%d threads)" % (i + 1, k, r["us_per_reading"], r["acked"], r["wall_s"],
                                           r["vmhwm_kib"] / 1024, r["wakeups_per_s"], r["threads"]), flush=True)
            idle_runs = {} if args.no_idle else idle(env, counter, args.idle_window)
            for k, r in idle_runs.items():
                print("  idle %-9s %6.2f wake-ups/s  %6.1f ms CPU/min  (%d threads)"
                      % (k, r["wakeups_per_s"], r["cpu_ms_per_min"], r["threads"]), flush=True)
        finally:
            counter.stop()
            sub.stop()
            broker.stop()
    res["w1"] = w1
    res["idle"] = idle_runs
    res["summary"] = summarise(w1, idle_runs)
    res["targets"] = targets(res["summary"])
    res["issue_figures (FIELD-NOTES, for context)"] = ISSUE
    res["runtime_s"] = time.monotonic() - started
    print(table(res))
    print("\nruntime %.0f s; results in %s; peer configs in %s" % (res["runtime_s"], args.out, CONFIGS))
    Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
