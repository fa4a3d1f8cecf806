"""Process accounting for the benches, read from /proc: one snapshot of a process, and what a
window between two snapshots cost it. bench/run.py, bench/peers.py, bench/edison_cap.py,
bench/isolation.py and bench/clients.py all count with these, so their figures compare.

Three clocks, because each answers another question:
  ticks   utime+stime from /proc/<pid>/stat: every thread, live and exited, in 10 ms ticks
  sched   the live threads' on-CPU time from schedstat, in ns (for small idle figures, where
          ten ticks would be the whole answer)
  wake-ups  voluntary context switches per thread (a thread that went to sleep and was woken)
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass
from typing import Dict, Iterable, Union

HZ = os.sysconf("SC_CLK_TCK")
Pid = Union[int, str]  # a pid, or "self"


def cpu_ticks_s(pid: Pid) -> float:
    """utime+stime of the whole process (all threads, live and exited), seconds."""
    with open("/proc/%s/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def sched_ns(pid: Pid) -> int:
    """Sum of the live threads' on-CPU time from schedstat, ns."""
    total = 0
    for path in glob.glob("/proc/%s/task/*/schedstat" % pid):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass  # the thread ended between the glob and the read
    return total


def status_kib(pid: Pid, key: str) -> int:
    """A /proc/<pid>/status figure in kB (VmHWM, VmRSS), 0 if the kernel has none."""
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def switches_by_thread(pid: Pid) -> Dict[int, int]:
    """tid -> voluntary_ctxt_switches of each live thread (the main thread's tid is the pid)."""
    out = {}
    for d in glob.glob("/proc/%s/task/*" % pid):
        try:
            with open(d + "/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        out[int(d.rsplit("/", 1)[1])] = int(line.split()[1])
        except OSError:
            pass
    return out


def thread_count(pid: Pid) -> int:
    return len(os.listdir("/proc/%s/task" % pid))


@dataclass(frozen=True)
class Usage:
    """A process's counters at one moment (`at` is time.monotonic())."""

    pid: int
    at: float
    ticks_s: float
    sched_ns: int
    switches: Dict[int, int]


def usage(pid: int) -> Usage:
    return Usage(pid, time.monotonic(), cpu_ticks_s(pid), sched_ns(pid), switches_by_thread(pid))


@dataclass(frozen=True)
class Window:
    """What a process spent between two snapshots of it."""

    before: Usage
    after: Usage

    @property
    def wall_s(self) -> float:
        return self.after.at - self.before.at

    @property
    def cpu_s(self) -> float:
        return self.after.ticks_s - self.before.ticks_s

    @property
    def sched_cpu_s(self) -> float:
        return (self.after.sched_ns - self.before.sched_ns) / 1e9

    @property
    def wakeups(self) -> int:
        """Voluntary switches in the window by the threads alive at its end (one that started
        within it counts from 0)."""
        return sum(self.after.switches.values()) - sum(self.before.switches.get(t, 0) for t in self.after.switches)

    @property
    def threads(self) -> int:
        return len(self.after.switches)

    def wakeups_by_thread(self, per: float) -> Dict[str, float]:
        """Wake-ups per `per` for each thread: 'main', then the others by tid order (t1, t2, ...)."""
        pid, before, after = self.after.pid, self.before.switches, self.after.switches
        out = {"main": (after.get(pid, 0) - before.get(pid, 0)) / per}
        for i, tid in enumerate(sorted(t for t in after if t != pid)):
            out["t%d" % (i + 1)] = (after[tid] - before.get(tid, 0)) / per
        return out


def total_ticks_s(pids: Iterable[int]) -> float:
    """cpu_ticks_s summed over processes, skipping those that have ended."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_ticks_s(pid)
        except OSError:
            continue
    return total
