"""CPU per acknowledged reading for cases a-e (and c@rate) from bench/results.json, log scale.

    python bench/plot.py bench/results.json docs/performance.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "a": "a: agent,\n1 reading/msg",
    "b": "b: agent,\nbatch 10",
    "c": "c: bare paho,\nburst (floor)",
    "c@rate": "c@rate: bare paho,\npaced like a",
    "d": "d: paho reconnect\nper reading",
    "e": "e: mosquitto_pub\nper reading",
}


def main(src: str, dst: str) -> None:
    results = json.load(open(src))
    c = results["cpu_per_reading"]
    keys = [k for k in LABELS if k in c["median_us_per_reading"]]
    med = [c["median_us_per_reading"][k] for k in keys]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    bars = ax.bar([LABELS[k] for k in keys], med,
                  color=["#1f77b4", "#1f77b4", "#7f7f7f", "#7f7f7f", "#d62728", "#d62728"][:len(keys)])
    for k, i in zip(keys, range(len(keys))):
        for r in c["runs"][k]:
            ax.plot(i, r["us_per_reading"], "k.", markersize=4)
    for k, bar, v in zip(keys, bars, med):
        top = max([v] + [r["us_per_reading"] for r in c["runs"][k]])
        ax.text(bar.get_x() + bar.get_width() / 2, top * 1.12, "%.0f us" % v, ha="center", fontsize=9)
    ax.set_yscale("log")
    ax.set_ylabel("client CPU per acknowledged reading (us, log)")
    m = results["machine"]
    ax.set_title("150-byte readings, QoS 1, mutual TLS to mosquitto on 127.0.0.1\n"
                 "median of %d interleaved rounds (dots: each round); agent at %g readings/s; %s, %s CPUs, %s"
                 % (c["rounds"], c["rate_readings_per_s"], m["cpu_model"], m["cpus"], m["date_utc"]), fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print("wrote %s" % dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
