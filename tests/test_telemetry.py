"""Telemetry over one mutual-TLS session reaches an independent subscriber, as the contract says."""

from __future__ import annotations

import time

from conftest import agent_config


def test_readings_arrive_at_an_independent_subscriber_with_the_contract_fields(certs, broker, subscriber,
                                                                               run_agent):
    agent = run_agent(agent_config(certs, broker.port))

    # A new spool's first seq is the clock's floor (docs/delivery.md), not 1.
    assert subscriber.online()["seq_start"] > 0
    first = subscriber.telemetry()
    second = subscriber.telemetry()

    assert first["device"] == "thunder10"
    reading = first["readings"][0]
    assert set(reading) == {"sensor", "value", "unit", "ts", "seq"}
    assert reading["sensor"] == "temperature"
    assert reading["unit"] == "degC"
    # The simulated ADC sits near 15% of its 10-bit scale: raw ~148 * 0.5 - 50 ~ 24.
    assert 15 < reading["value"] < 35
    assert abs(reading["ts"] - time.time()) < 10
    assert round(reading["ts"], 3) == reading["ts"]
    assert second["readings"][0]["seq"] > reading["seq"]
    assert agent.stop() == 0


def test_one_session_carries_every_reading(certs, broker, subscriber, run_agent):
    agent = run_agent(agent_config(certs, broker.port))
    # Every reading of ten messages (the first may carry those taken before the connection).
    seqs = [r["seq"] for _ in range(10) for r in subscriber.telemetry()["readings"]]
    assert agent.stop() == 0

    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    log = broker.log.read_text()
    # One CONNECT from the agent for the whole run: the handshake is paid once.
    assert log.count("as thunder10 (") == 1, log
    # use_identity_as_username: the broker knows the device by its certificate's CN.
    assert "u'thunder10'" in log
