"""A scaled estimate of the bench's figures on the Intel Edison (500 MHz dual-core Silvermont Atom).

Method, so the estimate can be checked rather than trusted:
1. OpenSSL publishes, in the comments of its own assembler sources, the cycles per byte its
   x86_64 integer-only SHA-256 and SHA-512 code takes on each CPU family, Silvermont (the
   Edison's core) included (crypto/sha/asm/sha512-x86_64.pl, table "Current performance in
   cycles per processed byte"). At the Edison's 500 MHz that gives its bytes per second.
2. This machine runs the very same integer code path: `OPENSSL_ia32cap=0:0` turns off every
   SIMD and SHA-extension path, so `openssl speed sha256 sha512` times the integer assembler.
3. The ratio of the two is how many times longer the Edison takes for the same integer work
   on one core. The two hashes agree within a few per cent here (see results.json).
Every CPU figure of the bench is multiplied by that factor. It is a lower bound for the
interpreter-bound part (CPython's dispatch loop is branchy and cache-hungry, and Silvermont's
branch predictor and 1 MiB shared L2 are weaker than a server core's), and it says nothing about
the Edison's flash (fsync) or Wi-Fi latency: those are not CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

# OpenSSL crypto/sha/asm/sha512-x86_64.pl, "Current performance in cycles per processed byte",
# row Silvermont, integer-only x86_64 columns.
SILVERMONT_CYCLES_PER_BYTE = {"sha256": 27.4, "sha512": 17.5}
EDISON_HZ = 500e6
EDISON_CORES = 2


def integer_hash_speed() -> Dict[str, float]:
    """Bytes per second of OpenSSL's integer-only SHA code on this machine (8 KiB blocks)."""
    env = dict(os.environ, OPENSSL_ia32cap="0:0")
    text = subprocess.run(["openssl", "speed", "-seconds", "2", "-bytes", "8192", "sha256", "sha512"],
                          capture_output=True, text=True, env=env, timeout=120).stdout
    speeds = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] in SILVERMONT_CYCLES_PER_BYTE and fields[1].endswith("k"):
            speeds[fields[0]] = float(fields[1][:-1]) * 1000.0
    return speeds


def scale_factor(speeds: Dict[str, float]) -> Dict[str, Any]:
    per_hash = {name: speeds[name] / (EDISON_HZ / cpb) for name, cpb in SILVERMONT_CYCLES_PER_BYTE.items()
                if name in speeds}
    if not per_hash:
        return {}
    return {"this_machine_bytes_per_s": speeds, "edison_slower_by": per_hash,
            "factor": max(per_hash.values())}


def estimate(results: Dict[str, Any], factor: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The bench's CPU figures as they would be on the Edison; None where the bench did not run that part."""
    factor = factor or scale_factor(integer_hash_speed())
    if not factor:
        return {}
    k = factor["factor"]
    out: Dict[str, Any] = {"method": "OpenSSL integer SHA cycles/byte (Silvermont, published) vs measured here",
                           **factor}
    c = results.get("cpu_per_reading", {}).get("median_us_per_reading", {})
    if c:
        out["us_per_reading"] = {case: us * k for case, us in c.items()}
        # One core's worth of readings per second: what the Edison could sustain with nothing else running.
        out["max_readings_per_s_one_core"] = {case: 1e6 / (us * k) for case, us in c.items()}
    w = results.get("w1")
    if w:
        out["w1_us_per_reading"] = {case: w[case]["us_per_reading"] * k
                                    for case in ("default", "unbatched", "batched (10, 1 s)") if case in w}
        out["w1_share_of_one_core"] = {case: 200 * us / 1e6 for case, us in out["w1_us_per_reading"].items()}
    cc = results.get("connection_cost")
    if cc:
        out["connect_cpu_ms"] = {variant: v["cpu_us_median"] * k / 1000 for variant, v in cc.items()
                                 if isinstance(v, dict) and "cpu_us_median" in v}
    idle = results.get("footprint", {}).get("agent_idle_cpu_ms_per_min")
    if idle is not None:
        out["idle_cpu_ms_per_min"] = idle * k
    return out


def describe(e: Dict[str, Any]) -> str:
    if not e:
        return "   (openssl speed unavailable: no estimate)"
    lines = ["   the Edison takes %.0fx this machine's CPU time for the same integer work (%s)"
             % (e["factor"], ", ".join("%s %.1fx" % kv for kv in e["edison_slower_by"].items()))]
    for case, us in e.get("us_per_reading", {}).items():
        lines.append("   %-8s %10.0f us CPU per reading, at most %6.0f readings/s on one of its %d cores"
                     % (case, us, e["max_readings_per_s_one_core"][case], EDISON_CORES))
    for case, share in e.get("w1_share_of_one_core", {}).items():
        lines.append("   W1 %-20s %5.0f%% of one core" % (case, 100 * share))
    for variant, ms in e.get("connect_cpu_ms", {}).items():
        lines.append("   connect %-27s %6.1f ms CPU" % (variant, ms))
    if "idle_cpu_ms_per_min" in e:
        lines.append("   idle: %.0f ms CPU per minute" % e["idle_cpu_ms_per_min"])
    return "\n".join(lines)


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results.json")
    results = json.loads(path.read_text()) if path.exists() else {}
    e = estimate(results)
    print("Scaled estimate for the Intel Edison (500 MHz Silvermont), from %s:" % path)
    print(describe(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
