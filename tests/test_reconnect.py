"""A broker that goes away and comes back: the agent reconnects by itself and publishing resumes."""

from __future__ import annotations

import random
import time

from agent.session import backoff_delay
from conftest import Broker, Subscriber, agent_config


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


def test_no_reading_is_lost_across_a_broker_restart(certs, tmp_path, run_agent):
    broker = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key, persistent=True)
    broker.start()
    watcher = Subscriber(broker, certs, session="monitor-session")
    try:
        time.sleep(0.3)
        agent = run_agent(agent_config(certs, broker.port))
        first = watcher.telemetry()["readings"][0]["seq"]
        lost_at = len(agent.lines)
        broker.stop()
        agent.wait_for("connection lost", after=lost_at)
        time.sleep(1.0)  # readings taken while the broker is down wait in the spool
        broker.start()
        agent.wait_for("connected to 127.0.0.1:%d again" % broker.port, after=lost_at)
        time.sleep(1.0)
        assert agent.stop() == 0
        last = int(agent.wait_for(r"stopped: \d+ readings delivered").split("stopped: ")[1].split()[0])
        seqs = {first}
        deadline = time.monotonic() + 15
        while not set(range(first, last + 1)) <= seqs and time.monotonic() < deadline:
            try:
                seqs.add(watcher.telemetry(timeout=1)["readings"][0]["seq"])
            except AssertionError:
                pass
        # At least once: duplicates are allowed, gaps are not.
        assert set(range(first, last + 1)) - seqs == set()
    finally:
        watcher.close()
        broker.stop()
