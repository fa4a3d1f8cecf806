"""A broker that goes away and comes back: the agent reconnects by itself and publishing resumes."""

from __future__ import annotations

import random

from agent.session import backoff_delay
from conftest import Subscriber, agent_config


def test_broker_restart_mid_run_reconnects_and_publishing_resumes(certs, broker, subscriber, run_agent):
    agent = run_agent(agent_config(certs, broker.port))
    subscriber.next("edison/thunder10/status", payload="online")
    before = subscriber.telemetry()["readings"][0]["seq"]

    lost_at = len(agent.lines)
    broker.stop()
    agent.wait_for("connection lost", after=lost_at)
    broker.start()
    agent.wait_for("connected to 127.0.0.1:%d again" % broker.port, timeout=15, after=lost_at)

    watcher = Subscriber(broker, certs)
    try:
        after = watcher.telemetry()["readings"][0]["seq"]
    finally:
        watcher.close()
    assert after > before
    assert agent.stop() == 0
    # Failing attempts while the broker was down are logged once per state, not once per attempt.
    assert agent.output.count("connection refused") <= 1, agent.output


def test_agent_started_before_its_broker_connects_when_it_appears(certs, broker, run_agent):
    broker.stop()
    agent = run_agent(agent_config(certs, broker.port))
    agent.wait_for("connection refused")
    broker.start()
    agent.wait_for("connected to 127.0.0.1:%d again" % broker.port)
    assert agent.stop() == 0


def test_backoff_grows_exponentially_within_the_configured_bounds_with_jitter():
    rng = random.Random(7)
    delays = [[backoff_delay(attempt, 1.0, 120.0, rng) for _ in range(200)] for attempt in range(1, 10)]

    for attempt, samples in enumerate(delays, start=1):
        cap = min(120.0, 2.0 ** attempt)
        assert all(1.0 <= d <= cap for d in samples)
        # Jitter: a fleet restarted together does not come back in the same instant.
        assert len({round(d, 3) for d in samples}) > 150
    assert max(delays[-1]) > 60
    assert max(delays[0]) <= 2.0
