"""SIGTERM and SIGINT: deliver what is in flight, publish offline, exit 0 within seconds."""

from __future__ import annotations

import signal
import time

import pytest

from conftest import agent_config


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_publishes_offline_and_exits_zero(certs, broker, subscriber, run_agent, sig):
    agent = run_agent(agent_config(certs, broker.port))
    subscriber.online()
    # Subscribed before the agent started: the first message holds its first reading.
    first = subscriber.telemetry()["readings"][0]["seq"]
    last_seen = subscriber.telemetry()["readings"][-1]["seq"]

    started = time.monotonic()
    assert agent.stop(sig) == 0
    assert time.monotonic() - started < 5

    subscriber.next("edison/thunder10/status", payload="offline", timeout=5)
    assert "Traceback" not in agent.output
    # Every reading the agent took was acknowledged before it went offline.
    delivered = int(agent.wait_for(r"stopped: \d+ readings delivered").split("stopped: ")[1].split()[0])
    assert delivered >= last_seen - first + 1
