"""Spool storage, measured side by side: SQLite (agent.delivery.spool) against append-only segment files.

    python bench/spool_bench.py [--dir DIR] [--seconds S]

Prints, for each candidate: CPU per append (what the sampler pays) and per reading all in
(append, commit, ack, delete); fsyncs per second at 1, 10 and 100 readings/s (counted with
strace when it is installed, else by the candidates' own counters); bytes written per 1,000
readings and per commit (from /proc/self/io write_bytes: pages the process dirtied, which is
what reaches the flash, not counting the filesystem's own journal); bytes written per day for
typical configurations; open time with a 100,000-reading backlog. Runs in well under 60 s.

The segment-file candidate lives only here: the smallest honest version (length, CRC, seq
and payload per record; acks as records; one fdatasync per commit; segments deleted from the
oldest end once fully acknowledged; in-memory index of every pending reading).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.delivery.spool import Spool  # noqa: E402
from agent.delivery.store import encode as _encode  # noqa: E402
from agent.sampling.reading import Sample  # noqa: E402

SENSORS = ["bme280.temperature", "bme280.humidity", "bme280.pressure", "tmp102.temperature", "light.lux"]


def sample(i: int) -> Sample:
    return Sample(SENSORS[i % len(SENSORS)], round(20.0 + (i % 1000) * 0.013, 3), "C", time.time())


def write_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def device_written(where: Path) -> Optional[int]:
    """Bytes the block device under `where` has written, journal included (system-wide: other writers count too)."""
    st = os.stat(str(where)).st_dev
    try:
        with open("/sys/dev/block/%d:%d/stat" % (os.major(st), os.minor(st))) as f:
            return int(f.read().split()[6]) * 512
    except (OSError, IndexError, ValueError):
        return None


# -- the alternative: append-only segment files ------------------------------------------------

class SegmentSpool:
    REC = struct.Struct("<IHBq")  # crc32, payload length, type, seq
    DATA, ACK = 1, 2
    SEGMENT_BYTES = 1 << 20

    def __init__(self, directory: Path, commit_interval: float = 1.0) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.commit_interval = commit_interval
        self.fsyncs = 0
        self.commits = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: Dict[int, int] = {}  # seq -> segment (first seq of the file)
        self._live: Dict[int, int] = {}  # segment -> pending count
        self._buffer: Dict[int, Tuple[bytes, float]] = {}  # seq -> (record, time of the append)
        self._acks: List[int] = []
        self._acks_since = 0.0
        self._last_attempt = -1e18
        self._next_seq = 1
        self._dirty = False
        self._closing = False
        self._segment = 0
        self._file: Optional[Any] = None
        self._size = 0
        self._replay()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _fsync(self, fd: int) -> None:
        os.fdatasync(fd)
        self.fsyncs += 1

    def _replay(self) -> None:
        for path in sorted(self.dir.glob("seg-*.log")):
            segment = int(path.stem[4:])
            data = path.read_bytes()
            pos = 0
            while pos + self.REC.size <= len(data):
                crc, length, kind, seq = self.REC.unpack_from(data, pos)
                body = data[pos + self.REC.size:pos + self.REC.size + length]
                if len(body) != length or zlib.crc32(data[pos + 4:pos + self.REC.size + length]) != crc:
                    break  # torn tail: the rest was never committed
                if kind == self.DATA:
                    self._pending[seq] = segment
                    self._live[segment] = self._live.get(segment, 0) + 1
                    self._next_seq = max(self._next_seq, seq + 1)
                else:
                    for (acked,) in struct.iter_unpack("<q", body):
                        seg = self._pending.pop(acked, None)
                        if seg is not None:
                            self._live[seg] -= 1
                pos += self.REC.size + length
            self._live.setdefault(segment, 0)

    def depth(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._buffer)

    def append(self, s: Sample) -> int:
        blob = _encode(s)
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self._buffer[seq] = (blob, time.monotonic())
            if not self._dirty:
                self._dirty = True
                self._wake.notify()
            return seq

    def ack(self, seqs: List[int]) -> None:
        with self._lock:
            for seq in seqs:
                if self._buffer.pop(seq, None) is None:
                    if not self._acks:
                        self._acks_since = time.monotonic()
                    self._acks.append(seq)
            if not self._dirty:
                self._dirty = True
                self._wake.notify()

    def _run(self) -> None:
        # The same policy as agent.delivery.spool: each change is due commit_interval after it happened,
        # attempts are commit_interval apart, what was acknowledged in time is never written.
        while True:
            with self._lock:
                while not (self._closing or self._dirty):
                    self._wake.wait()
                while not self._closing:
                    born = [t for _, t in list(self._buffer.values())[:1]] + ([self._acks_since] if self._acks else [])
                    if not born:
                        self._dirty = False
                        break
                    remaining = max(min(born), self._last_attempt) + self.commit_interval - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.wait(remaining)
                if self._closing:
                    return
                idle = not self._dirty
            if not idle:
                self.commit()

    def commit(self) -> bool:
        with self._lock:
            rows = {seq: blob for seq, (blob, _) in self._buffer.items()}
            self._buffer = {}
            acks, self._acks = self._acks, []
            self._dirty = False
            self._last_attempt = time.monotonic()
        if not rows and not acks:
            return False
        if self._file is None or self._size > self.SEGMENT_BYTES:
            self._rotate(min(rows) if rows else self._next_seq)
        out = bytearray()
        for seq, blob in rows.items():
            head = struct.pack("<HBq", len(blob), self.DATA, seq)
            out += struct.pack("<I", zlib.crc32(head + blob)) + head + blob
        if acks:
            body = struct.pack("<%dq" % len(acks), *acks)
            head = struct.pack("<HBq", len(body), self.ACK, 0)
            out += struct.pack("<I", zlib.crc32(head + body)) + head + body
        assert self._file is not None
        self._file.write(out)
        self._file.flush()
        self._fsync(self._file.fileno())
        self._size += len(out)
        with self._lock:
            for seq in rows:
                self._pending[seq] = self._segment
                self._live[self._segment] = self._live.get(self._segment, 0) + 1
            for seq in acks:
                seg = self._pending.pop(seq, None)
                if seg is not None:
                    self._live[seg] -= 1
            dead = []
            for seg in sorted(self._live):
                if self._live[seg] or seg == self._segment:
                    break
                dead.append(seg)
            for seg in dead:
                del self._live[seg]
        for seg in dead:
            os.remove(str(self.dir / ("seg-%016d.log" % seg)))
        self.commits += 1
        return True

    def _rotate(self, first_seq: int) -> None:
        if self._file is not None:
            self._file.close()
        self._segment = first_seq
        self._file = open(str(self.dir / ("seg-%016d.log" % first_seq)), "ab")  # noqa: SIM115
        self._size = 0
        self._live.setdefault(first_seq, 0)
        fd = os.open(str(self.dir), os.O_RDONLY)
        try:
            self._fsync(fd)  # the new file's name must survive a power cut
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        self._thread.join()
        self.commit()
        if self._file is not None:
            self._file.close()


# -- adapters: one driver for both --------------------------------------------------------------

class Candidate:
    name = ""

    def open(self, where: Path, commit_interval: float, max_bytes: int = 64 << 20) -> None:
        raise NotImplementedError

    def append(self, s: Sample) -> int:
        raise NotImplementedError

    def deliver(self, count: int) -> List[int]:
        """What the uplink would publish now (taken from the spool)."""
        raise NotImplementedError

    def ack(self, seqs: List[int]) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def commits(self) -> int:
        raise NotImplementedError

    def fsyncs(self) -> Optional[int]:
        """Counted by the candidate itself (None: only strace can count them)."""
        raise NotImplementedError

    def depth(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SQLiteCandidate(Candidate):
    name = "sqlite"

    def open(self, where: Path, commit_interval: float, max_bytes: int = 64 << 20) -> None:
        self.spool = Spool(where / "spool.db", max_bytes=max_bytes, commit_interval=commit_interval)

    def append(self, s: Sample) -> int:
        return self.spool.append(s).seq

    def deliver(self, count: int) -> List[int]:
        return [r.seq for r in self.spool.take(count)]

    def ack(self, seqs: List[int]) -> None:
        self.spool.ack(seqs)

    def commit(self) -> None:
        self.spool.commit()

    def commits(self) -> int:
        return self.spool.stats().commits

    def fsyncs(self) -> Optional[int]:
        return None

    def depth(self) -> int:
        return self.spool.depth

    def close(self) -> None:
        self.spool.close()


class SegmentCandidate(Candidate):
    name = "segments"

    def open(self, where: Path, commit_interval: float, max_bytes: int = 64 << 20) -> None:
        self.spool = SegmentSpool(where / "segments", commit_interval)
        self._sent = 0

    def append(self, s: Sample) -> int:
        return self.spool.append(s)

    def deliver(self, count: int) -> List[int]:
        with self.spool._lock:
            waiting = sorted(s for s in list(self.spool._pending) + list(self.spool._buffer) if s > self._sent)
        out = waiting[:count]
        if out:
            self._sent = out[-1]
        return out

    def ack(self, seqs: List[int]) -> None:
        self.spool.ack(seqs)

    def commit(self) -> None:
        self.spool.commit()

    def commits(self) -> int:
        return self.spool.commits

    def fsyncs(self) -> Optional[int]:
        return self.spool.fsyncs

    def depth(self) -> int:
        return self.spool.depth()

    def close(self) -> None:
        self.spool.close()


CANDIDATES: Dict[str, Callable[[], Candidate]] = {"sqlite": SQLiteCandidate, "segments": SegmentCandidate}


# -- measurements ---------------------------------------------------------------------------------

def cpu_per_append(make: Callable[[], Candidate], where: Path, n: int) -> Tuple[float, float]:
    """(µs of the caller per append, µs of process CPU per reading for append+commit+take+ack+delete)."""
    c = make()
    c.open(where, commit_interval=3600)
    samples = [sample(i) for i in range(n)]
    t0 = time.perf_counter()
    for s in samples:
        c.append(s)
    per_append = (time.perf_counter() - t0) / n * 1e6
    c.commit()
    c.close()
    shutil.rmtree(where)
    where.mkdir()
    c = make()
    c.open(where, commit_interval=3600)
    cpu0 = time.process_time()
    for i in range(0, n, 100):
        for s in samples[i:i + 100]:
            c.append(s)
        c.commit()
        c.ack(c.deliver(100))
    c.commit()
    all_in = (time.process_time() - cpu0) / n * 1e6
    c.close()
    return per_append, all_in


def bytes_scenario(make: Callable[[], Candidate], where: Path, per_commit: int, commits: int, mode: str,
                   backlog: int = 0, max_bytes: int = 64 << 20) -> Tuple[float, Optional[float]]:
    """Bytes written per commit in steady state: (write_bytes of this process, the device's count).

    mode "down": each commit writes `per_commit` new readings, nothing acked (link down; with a
    full spool the SQLite spool also deletes as many dropped ones).
    mode "cycle": each commit writes `per_commit` new readings and deletes the previous commit's
    (they were acked after their commit: link up, acks slower than the commit).
    """
    c = make()
    c.open(where, commit_interval=3600, max_bytes=max_bytes)
    i = 0
    for _ in range(backlog // 1000):
        for _ in range(1000):
            c.append(sample(i))
            i += 1
        c.commit()
    previous: List[int] = []
    for _ in range(20):  # warm up: WAL wrap, freelist, first checkpoint
        previous = _one_commit(c, i, per_commit, mode, previous)
        i += per_commit
    d0 = device_written(where)
    w0 = write_bytes()
    for _ in range(commits):
        previous = _one_commit(c, i, per_commit, mode, previous)
        i += per_commit
    written = write_bytes() - w0
    d1 = device_written(where)
    c.close()
    return written / commits, (d1 - d0) / commits if d0 is not None and d1 is not None else None


def _one_commit(c: Candidate, i: int, per_commit: int, mode: str, previous: List[int]) -> List[int]:
    seqs = [c.append(sample(i + k)) for k in range(per_commit)]
    if mode == "cycle" and previous:
        c.ack(c.deliver(len(previous)))  # the oldest unsent: the previous commit's readings
    c.commit()
    return seqs


def open_time(make: Callable[[], Candidate], where: Path, backlog: int) -> Tuple[float, float]:
    c = make()
    c.open(where, commit_interval=3600)
    for i in range(backlog):
        c.append(sample(i))
        if i % 5000 == 4999:
            c.commit()
    c.close()
    t0 = time.perf_counter()
    c = make()
    c.open(where, commit_interval=3600)
    opened = time.perf_counter() - t0
    first = c.deliver(20)
    took = time.perf_counter() - t0
    assert first and c.depth() == backlog, (len(first), c.depth())
    c.close()
    return opened, took


def rate_run(name: str, where: Path, rate: float, seconds: float, ack_latency: Optional[float]) -> Dict[str, Any]:
    """Readings at `rate`/s for `seconds`, commit_interval 1 s; acked after `ack_latency` (None: link down)."""
    c = CANDIDATES[name]()
    c.open(where, commit_interval=1.0)
    commits0 = c.commits()
    fsyncs0 = c.fsyncs()
    stop = threading.Event()
    acker: Optional[threading.Thread] = None
    if ack_latency is not None:
        def run_acks() -> None:
            while not stop.is_set():
                seqs = c.deliver(50)
                if seqs:
                    time.sleep(ack_latency)
                    c.ack(seqs)
                else:
                    time.sleep(0.002)
        acker = threading.Thread(target=run_acks, daemon=True)
        acker.start()
    os.getppid()  # marker for strace: the window starts
    w0 = write_bytes()
    t0 = time.monotonic()
    i = 0
    while True:
        due = t0 + i / rate
        now = time.monotonic()
        if due - t0 >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        c.append(sample(i))
        i += 1
    time.sleep(max(0.0, t0 + seconds - time.monotonic()))
    elapsed = time.monotonic() - t0
    written = write_bytes() - w0
    commits = c.commits() - commits0
    os.getppid()  # marker: the window ends
    stop.set()
    if acker is not None:
        acker.join()
    fsyncs = c.fsyncs()
    c.close()
    return {"readings": i, "seconds": elapsed, "commits": commits, "write_bytes": written,
            "fsyncs_self": None if fsyncs is None or fsyncs0 is None else fsyncs - fsyncs0}


class RateRun:
    """One run in a child process, under strace when available: fdatasync/fsync between the markers."""

    def __init__(self, name: str, rate: float, seconds: float, ack_latency: Optional[float], base: Path,
                 strace: Optional[List[str]]) -> None:
        self.name, self.rate, self.ack_latency, self.strace = name, rate, ack_latency, strace
        self.where = Path(tempfile.mkdtemp(dir=base))
        self.trace = self.where / "strace.txt"
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, str(rate), str(seconds),
                "-" if ack_latency is None else str(ack_latency), str(self.where)]
        if strace is not None:
            argv = strace + ["-f", "-qq", "-e", "trace=fsync,fdatasync,getppid", "-o", str(self.trace)] + argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> Dict[str, Any]:
        out, err = self.proc.communicate(timeout=60)
        if self.proc.returncode:
            raise RuntimeError("bench child failed: %s" % err)
        result: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        if self.strace is not None:
            lines = self.trace.read_text().splitlines()
            marks = [n for n, line in enumerate(lines) if "getppid(" in line]
            window = lines[marks[0] + 1:marks[-1]] if len(marks) >= 2 else []
            result["fsyncs"] = sum(1 for line in window if "fdatasync(" in line or "fsync(" in line)
        else:
            result["fsyncs"] = result["fsyncs_self"] if result["fsyncs_self"] is not None else result["commits"]
        shutil.rmtree(self.where)
        return result


# -- report -----------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--dir", help="where to put the files (default: a temporary directory)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each real-time rate run")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, rate, seconds, latency, where = args.child
        print(json.dumps(rate_run(name, Path(where), float(rate), float(seconds),
                                  None if latency == "-" else float(latency))))
        return 0

    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
    strace = _strace_command()
    names = list(CANDIDATES)
    print("spool storage bench: %s, Python %s, SQLite %s, files in %s (%s)"
          % (os.uname().machine, sys.version.split()[0], __import__("sqlite3").sqlite_version, base,
             _filesystem(base)))
    try:
        def fresh() -> Path:
            return Path(tempfile.mkdtemp(dir=base))

        # The real-time runs first, all at once in child processes (they sleep most of the time);
        # the CPU figures are measured after them, on an otherwise quiet machine.
        rates = ((1, None), (10, None), (100, None), (10, 0.02), (100, 0.02))
        runs = [RateRun(name, rate, args.seconds, latency, base, strace) for name in names for rate, latency in rates]
        results = [(run, run.result()) for run in runs]

        print("\n1. CPU per reading, µs: the sampler's cost of append() | all in (append, commit, take, ack, delete)")
        for name in names:
            per_append, all_in = cpu_per_append(CANDIDATES[name], fresh(), 20_000)
            print("   %-9s %6.1f | %6.1f" % (name, per_append, all_in))
        mem = Spool(None)
        samples = [sample(i) for i in range(20_000)]
        t0 = time.perf_counter()
        for s in samples:
            mem.append(s)
        print("   %-9s %6.1f |   (in memory, path=None, for comparison)"
              % ("memory", (time.perf_counter() - t0) / len(samples) * 1e6))

        print("\n2. bytes written per commit, steady state: write_bytes of the process / the device (journal"
              " included)")
        per_day: Dict[str, Dict[str, float]] = {}
        for name in names:
            make = CANDIDATES[name]
            cases = [("5 per commit, link down", 5, 200, "down", 0, 64 << 20),
                     ("200 per commit, link down", 200, 40, "down", 0, 64 << 20),
                     ("4 per commit, acked after their commit", 4, 200, "cycle", 0, 64 << 20),
                     ("100 per commit, acked after their commit", 100, 40, "cycle", 0, 64 << 20)]
            if name == "sqlite":  # only the real spool drops when full
                cases.append(("200 per commit, spool full (drops)", 200, 40, "down", 20_000, 1 << 20))
            figures: Dict[str, float] = {}
            for label, per, commits, mode, backlog, max_bytes in cases:
                wb, dev = bytes_scenario(make, fresh(), per, commits, mode, backlog, max_bytes)
                figures[label] = dev if dev is not None else wb
                print("   %-9s %-42s %7.0f / %7s B   %7.0f / %7s B per 1,000 readings"
                      % (name, label, wb, "%.0f" % dev if dev is not None else "n/a", wb / per * 1000,
                         "%.0f" % (dev / per * 1000) if dev is not None else "n/a"))
            full = figures.get("200 per commit, spool full (drops)")
            per_day[name] = {
                "5 sensors every 10 s, link down": figures["5 per commit, link down"] * 8640,
                "200 readings/s, link down, filling": figures["200 per commit, link down"] * 86400,
                "200 readings/s, link down, full": full * 86400 if full is not None else float("nan"),
                # Each reading written, then deleted by a later commit: 200/s = 2 x 100 per commit.
                "200 readings/s, link up, acks slower than commit_interval":
                    figures["100 per commit, acked after their commit"] * 2 * 86400,
            }

        print("\n3. open with a 100,000-reading backlog: s to open | to open and take the first 20")
        for name in names:
            opened, took = open_time(CANDIDATES[name], fresh(), 100_000)
            print("   %-9s %6.3f | %6.3f" % (name, opened, took))

        print("\n4. fsyncs per second, commit_interval 1 s, %.0f s runs; counted by %s"
              % (args.seconds, "strace (fsync and fdatasync calls)" if strace else "the candidates (SQLite: commits)"))
        print("   link down: nothing acknowledged; link up: acknowledged 20 ms after it was taken")
        print("   %-9s %-5s %7s %8s %9s %10s" % ("", "link", "rate/s", "commits", "fsyncs/s", "bytes/s"))
        up: Dict[Tuple[str, int], float] = {}
        for run, r in results:
            if run.ack_latency is not None:
                up[(run.name, int(run.rate))] = r["write_bytes"] / r["seconds"]
            print("   %-9s %-5s %7d %8d %9.2f %10.0f" % (run.name, "down" if run.ack_latency is None else "up",
                                                       run.rate, r["commits"], r["fsyncs"] / r["seconds"],
                                                       r["write_bytes"] / r["seconds"]))

        print("\n5. bytes written per day (from 2 and 4; device figures where available)")
        for config in per_day[names[0]]:
            print("   %-54s " % config + "  ".join("%s %7.0f MB" % (n, per_day[n][config] / 1e6) for n in names))
        for rate in (10, 100):
            print("   %-54s " % ("%d readings/s, link up (acks in 20 ms), from 4" % rate)
                  + "  ".join("%s %7.0f MB" % (n, up.get((n, rate), float("nan")) * 86400 / 1e6) for n in names))
        print("   link up, any rate, acks faster than commit_interval: nothing but SQLite's seq reservation (one"
              " small commit per 5,000 readings)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\n(%.1f s)" % (time.monotonic() - started))
    return 0


def _strace_command() -> Optional[List[str]]:
    if shutil.which("strace") is None:
        return None
    for command in (["strace", "--seccomp-bpf"], ["strace"]):
        try:
            probe = subprocess.run(command + ["-f", "-qq", "-e", "trace=getppid", "-o", os.devnull, "true"],
                                   capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        if probe.returncode == 0:
            return command
    return None


def _filesystem(where: Path) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and str(where.resolve()).startswith(fields[1]) and len(fields[1]) >= len(best):
                    best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


if __name__ == "__main__":
    sys.exit(main())
