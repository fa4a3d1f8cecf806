"""CPU per reading on the agent's own path, in one process, without the network (issue 16).

    python bench/hot_path.py [--seconds 300] [--sensors 200] [--rounds 5]

W1's shape (200 simulated analog sensors read once a second) through the real objects: the
config loader, the simulated board's drivers, the sampler's schedule, the processing, the spool
(with its SQLite file) and the telemetry encoding. The clock is a fake one that moves on when the
schedule waits, so --seconds of schedule run as fast as the CPU allows (except where the spool
waits for its committer to extend the seq reservation, in real time: sleeping, not CPU). At the end of each
wake-up the readings are taken in batches of batch.max_readings (100), encoded as the uplink
encodes them, and acknowledged, as the broker would a moment later.

What it leaves out is the MQTT session (paho, TLS, the socket) and the daemon's wiring: those
are in `make bench`'s W1, whose window also holds the kernel's and SQLite's share. This figure
moves only with the agent's Python, so a change to the per-reading path shows here without
W1's run-to-run spread. Printed: process CPU (all threads) per reading, each round and the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import schema  # noqa: E402
from agent.delivery.spool import Spool  # noqa: E402
from agent.hardware.choose import open_board  # noqa: E402
from agent.hardware.sensor_process import isolate  # noqa: E402
from agent.sampling.reading import Reading, Sample, encode_telemetry  # noqa: E402
from agent.sampling.sampler import Sampler  # noqa: E402

EPOCH = time.time()
MAX_READINGS = 100  # batch.max_readings' default
WAIT_FOR_COMMIT = 30  # s: a commit is due within commit_interval (1 s)


class FakeClock:
    """Monotonic time that a wait moves on instead of sleeping; set once `until` is reached."""

    def __init__(self, until: float) -> None:
        self.now = 0.0
        self.until = until

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    def is_set(self) -> bool:
        return self.now >= self.until

    def wait(self, timeout: Optional[float] = None) -> bool:
        if timeout is not None:
            self.now += timeout
        return self.is_set()


def config_file(d: Path, sensors: int) -> Path:
    path = d / "config.yaml"
    path.write_text(yaml.safe_dump({
        "device": {"id": "bench-hot-path"},
        "mqtt": {"host": "127.0.0.1", "port": 8883},
        "board": "simulated",
        "state_dir": str(d / "state"),
        "sensors": [{"name": "s%03d" % i, "type": "analog", "pin": i % 6, "interval": 1, "unit": "degC"}
                    for i in range(sensors)],
    }, sort_keys=False))
    return path


def one_round(seconds: float, sensors: int) -> float:
    """CPU seconds per reading over `seconds` of W1's schedule."""
    with tempfile.TemporaryDirectory(prefix="edison-hot-") as tmp:
        d = Path(tmp)
        config = schema.load(config_file(d, sensors))
        (d / "state").mkdir()
        spool = Spool(config.spool.path, config.spool.max_bytes, config.spool.max_age, config.spool.commit_interval)
        clock = FakeClock(seconds)
        delivered = [0]

        def end_of_wakeup() -> None:
            deadline = time.monotonic() + WAIT_FOR_COMMIT
            while True:
                batch: List[Reading] = spool.take(MAX_READINGS)
                if not batch:
                    if not spool.depth:
                        return
                    # Seqs are handed out under a durable reservation, which the committer extends
                    # on its own (real) clock: at W1's pace it is ahead; here it is waited for.
                    if time.monotonic() > deadline:
                        raise SystemExit("bench: the spool handed out nothing for %d s with %d readings in it "
                                         "(its committer did not extend the seq reservation)"
                                         % (WAIT_FOR_COMMIT, spool.depth))
                    time.sleep(0.005)
                    continue
                encode_telemetry(config.device_id, batch)
                spool.ack([r.seq for r in batch])
                delivered[0] += len(batch)

        def sink(sample: Sample) -> None:
            spool.append(sample)

        sampler = Sampler(isolate(config.sensors, open_board("simulated")), sink, monotonic=clock.monotonic,
                          wall=clock.wall)
        started = time.process_time()
        sampler.run(clock, before_sleep=end_of_wakeup)  # type: ignore[arg-type]
        end_of_wakeup()
        spent = time.process_time() - started
        sampler.close()
        spool.close()
        if delivered[0] < sensors * (seconds - 1):
            raise SystemExit("bench: only %d readings delivered in %g s of schedule" % (delivered[0], seconds))
        return spent / delivered[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300.0, help="seconds of schedule per round (fake clock)")
    p.add_argument("--sensors", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    one_round(5.0, args.sensors)  # warm: imports, the first file
    rounds = [1e6 * one_round(args.seconds, args.sensors) for _ in range(args.rounds)]
    print("hot path (sampler, processing, spool with its file, telemetry encoding), %d sensors at 1 s, "
          "%g s of schedule a round" % (args.sensors, args.seconds))
    print("  us/reading, rounds: %s" % ", ".join("%.2f" % r for r in rounds))
    print("  median %.2f us/reading" % statistics.median(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
