"""What bench/run.py reports besides its measurements: the machine it ran on, this machine's
crypto speed (for the scaled Edison estimate), and the table it prints.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import time
from typing import Any, Dict

import edison  # bench/edison.py, beside this file
from rig import DEVICE, ROOT, SENSOR_NAME  # rig puts the checkout on sys.path, for agent.*

TARGETS = {"a/c": ("<=", 1.5), "b/c": ("<=", 0.35), "d/a": (">=", 30.0), "e/a": (">=", 100.0)}


def machine() -> Dict[str, Any]:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[:1]
    import ssl
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "agent"], capture_output=True,
                           text=True).stdout.split("\n")
    return {"agent_commit": git.stdout.strip(),
            # The agent is measured as it is in the working tree: say when that differs from the commit.
            "agent_uncommitted": [line[3:] for line in dirty if line.strip()],
            "cpu_model": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
            "paho": importlib.metadata.version("paho-mqtt"),
            "mosquitto": mosq[0] if mosq else "", "date_utc": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC")}


def crypto_speed() -> Dict[str, Any]:
    """This machine's `openssl speed` for the handshake's asymmetric operations and a Python
    microbenchmark: the two figures to take on the board for a scaled estimate (docs/performance.md)."""
    out: Dict[str, Any] = {}
    try:
        text = subprocess.run(["openssl", "speed", "-seconds", "1", "rsa2048", "ecdsap256", "ecdhx25519"],
                              capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return out
    for line in text.splitlines():
        f = line.split()
        if line.startswith("rsa 2048 bits"):
            out["rsa2048_sign_us"], out["rsa2048_verify_us"] = 1e6 / float(f[-2]), 1e6 / float(f[-1])
        elif "ecdsa (nistp256)" in line:
            out["ecdsap256_sign_us"], out["ecdsap256_verify_us"] = 1e6 / float(f[-2]), 1e6 / float(f[-1])
        elif "ecdh (X25519)" in line:
            out["x25519_op_us"] = 1e6 / float(f[-1])
    import timeit

    from agent.sampling.reading import Reading, encode_telemetry
    r = [Reading(1, time.time(), SENSOR_NAME, 23.4765625, "degC")]
    n = 20000
    out["python_encode_telemetry_us"] = 1e6 * min(timeit.repeat(lambda: encode_telemetry(DEVICE, r), number=n,
                                                                repeat=3)) / n
    return out


def table(results: Dict[str, Any]) -> str:
    lines = []
    c = results.get("cpu_per_reading")
    if c:
        lines += ["", "1. CPU per acknowledged reading (median of %d interleaved rounds; %g readings/s for the agent)"
                  % (c["rounds"], c["rate_readings_per_s"]),
                  "   %-8s %14s   %s" % ("case", "us/reading", "all rounds")]
        for k, v in c["median_us_per_reading"].items():
            lines.append("   %-8s %14.1f   %s" % (k, v, ", ".join("%.1f" % r["us_per_reading"] for r in c["runs"][k])))
        lines.append("   wake-ups per reading (median, all threads): %s" % ", ".join(
            "%s %.2f" % (k, v) for k, v in c.get("median_wakeups_per_reading", {}).items()))
        for k, v in c["ratios"].items():
            t = TARGETS.get(k)
            verdict = ("  target %s %g: %s" % (t[0], t[1], "met" if c["targets_met"][k] else "NOT met")) if t else ""
            lines.append("   %-9s %8.2f%s" % (k, v, verdict))
    cc = results.get("connection_cost")
    if cc:
        lines += ["", "2. Connection cost (connect to CONNACK, client side)",
                  "   %-27s %8s %10s %10s %8s %8s" % ("variant", "CPU us", "wall p50", "wall p90", "resumed", "TLS")]
        for k, v in cc.items():
            if isinstance(v, dict) and "cpu_us_median" in v:
                lines.append("   %-27s %8.0f %8.2fms %8.2fms %7.0f%% %8s" % (k, v["cpu_us_median"], v["wall_ms_p50"],
                             v["wall_ms_p90"], 100 * v["resumed_fraction"], v["tls_version"]))
        for k, v in cc["ratios"].items():
            lines.append("   %s: %.2f" % (k, v))
        ar = cc.get("agent_session_resumes", {})
        lines.append("   the agent itself, reconnecting after a session takeover: reconnected %s, resumed %s"
                     % (ar.get("reconnected"), ar.get("resumed")))
    f = results.get("footprint")
    if f:
        lines += ["", "3. Footprint (idle window %g s)" % f["window_s"]]
        for k, v in f.items():
            if k != "window_s":
                lines.append("   %-45s %s" % (k, ("%.2f" % v) if isinstance(v, float) else v))
    w = results.get("w1")
    if w:
        lines += ["", "4. W1: 200 simulated sensors at 1 s"]
        for k in ("default", "batched (10, 1 s)"):
            lines.append("   %-20s %8.1f us/reading  (%d readings in %.0f s, %d threads)"
                         % (k, w[k]["us_per_reading"], w[k]["acked"], w[k]["wall_s"], w[k]["threads"]))
        for k, v in w["targets"].items():
            lines.append("   %-40s %s" % (k, "met" if v else "NOT met"))
    sd = results.get("spool_drain")
    if sd:
        lines += ["", "5. Spool: a %d-reading backlog drains in %.2f s (%d received; target <= 10 s: %s)"
                  % (sd["backlog"], sd["drain_s"], sd["received"], "met" if sd["target_met (<= 10 s)"] else "NOT met"),
                  "   fsyncs per second at 1/10/100 readings/s: python bench/spool_bench.py"]
    sp = results.get("speed")
    if sp:
        lines += ["", "6. openssl speed / Python on this machine (us per operation)",
                  "   " + ", ".join("%s %.1f" % (k, v) for k, v in sp.items())]
    if "edison_estimate" in results:
        lines += ["", "7. Scaled estimate for the Intel Edison (method: bench/edison.py)",
                  edison.describe(results["edison_estimate"])]
    return "\n".join(lines)


