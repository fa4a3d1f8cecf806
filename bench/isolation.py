"""What running each hardware sensor in a process of its own costs (issue 13): CPU per reading and memory.

    python bench/isolation.py [--before DIR] [--window 20] [--rounds 3]

Runs `python -m agent run` on the fake libmraa (tests/fake_mraa, board: mraa) with five sensors
at 0.1 s (2 analog, 1 digital, 1 i2c, 1 counter: 50 readings/s) against a plain mosquitto on
127.0.0.1, and measures over a window after a warm-up:
  - CPU: utime+stime of the agent and every process under it (fork server, resource tracker,
    hardware processes), per sampled reading (health document's readings.sampled);
  - memory: the sum of PSS (what the processes cost together, shared pages split) and each
    process's RSS, from /proc/<pid>/smaps_rollup.
With --before DIR (a checkout of the agent package from before the change, e.g.
`git archive <commit> agent | tar -x -C DIR`), the same run with that code, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import procstat  # bench/procstat.py: this script's own directory is on sys.path
import yaml

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "fake_mraa"


def descendants(pid: int) -> List[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path("/proc/%d/task" % current).glob("*/children"):
            try:
                todo.extend(int(p) for p in task.read_text().split())
            except OSError:
                pass
    return found


def memory(pids: List[int]) -> Dict[str, Any]:
    pss = 0
    rss: List[float] = []
    for pid in pids:
        try:
            text = Path("/proc/%d/smaps_rollup" % pid).read_text()
        except OSError:
            continue
        values = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[1:]}
        pss += values["Pss"]
        rss.append(round(values["Rss"] / 1024, 1))
    result: Dict[str, Any] = {"pss_total_mib": round(pss / 1024, 1), "rss_each_mib": rss, "processes": len(rss)}
    return result


def sampled(health: Path) -> int:
    for _ in range(50):
        try:
            return int(json.loads(health.read_text())["readings"]["sampled"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.1)
    raise RuntimeError("no health document at %s" % health)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_once(work: Path, agent_path: Path, window: float) -> Dict[str, object]:
    port = free_port()
    (work / "mosquitto.conf").write_text("listener %d 127.0.0.1\nallow_anonymous true\n" % port)
    broker = subprocess.Popen(["mosquitto", "-c", str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    state = work / "state"
    state.mkdir(exist_ok=True)
    config = {
        "device": {"id": "bench13"}, "board": "mraa", "state_dir": str(state), "log_level": "warning",
        "mqtt": {"host": "127.0.0.1", "port": port},
        "health": {"file": str(state / "health.json"), "interval": 1},
        "sensors": [
            {"name": "a0", "type": "analog", "pin": 0, "interval": 0.1},
            {"name": "a1", "type": "analog", "pin": 1, "interval": 0.1},
            {"name": "door", "type": "digital", "pin": 4, "interval": 0.1},
            {"name": "reg", "type": "i2c", "address": 0x40, "register": 0x10, "interval": 0.1},
            {"name": "wind", "type": "counter", "pin": 7, "interval": 0.1},
        ],
    }
    (work / "agent.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH="%s:%s" % (FAKE, agent_path), FAKE_MRAA_I2C="0x40=0x10:0x01,0x11:0x02",
               FAKE_MRAA_PULSES="7=20")
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", str(work / "agent.yaml")], cwd=str(work),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)  # connected, every hardware process started and warm
        pids = descendants(agent.pid)
        cpu0, n0, t0 = procstat.total_ticks_s(pids), sampled(state / "health.json"), time.monotonic()
        time.sleep(window)
        pids = descendants(agent.pid)
        cpu1, n1, t1 = procstat.total_ticks_s(pids), sampled(state / "health.json"), time.monotonic()
        result: Dict[str, object] = {"readings_per_s": round((n1 - n0) / (t1 - t0), 1),
                                     "cpu_us_per_reading": round((cpu1 - cpu0) / max(1, n1 - n0) * 1e6),
                                     "cpu_pct": round((cpu1 - cpu0) / (t1 - t0) * 100, 1)}
        result.update(memory(pids))
        return result
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        broker.terminate()
        broker.wait(10)


def measure(agent_path: Path, window: float, rounds: int) -> Dict[str, object]:
    runs = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run_once(Path(tmp), agent_path, window))
    summary: Dict[str, object] = {"runs": runs}
    for key in ("cpu_us_per_reading", "pss_total_mib", "readings_per_s"):
        summary["median_" + key] = statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a directory holding the agent package from before")
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results = {"after": measure(ROOT, args.window, args.rounds)}
    if args.before is not None:
        results["before"] = measure(args.before.resolve(), args.window, args.rounds)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
