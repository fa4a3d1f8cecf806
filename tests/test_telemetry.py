"""Telemetry over one mutual-TLS session reaches an independent subscriber, as the contract says."""

from __future__ import annotations

import time

from conftest import agent_config


def test_readings_arrive_at_an_independent_subscriber_with_the_contract_fields(certs, broker, subscriber,
                                                                               run_agent):
    agent = run_agent(agent_config(certs, broker.port))

    assert subscriber.next("edison/thunder10/status", payload="online") == "online"
    first = subscriber.telemetry()
    second = subscriber.telemetry()

    assert first["device"] == "thunder10"
    reading = first["readings"][0]
    assert set(reading) == {"sensor", "value", "unit", "ts", "seq"}
    assert reading["sensor"] == "temperature"
    assert reading["unit"] == "degC"
    # The simulated ADC sits near mid-scale: raw ~512 * 0.5 - 50 ~ 206.
    assert 150 < reading["value"] < 260
    assert abs(reading["ts"] - time.time()) < 10
    assert round(reading["ts"], 3) == reading["ts"]
    assert second["readings"][0]["seq"] > reading["seq"]
    assert agent.stop() == 0


def test_one_session_carries_every_reading(certs, broker, subscriber, run_agent):
    agent = run_agent(agent_config(certs, broker.port))
    seqs = [subscriber.telemetry()["readings"][0]["seq"] for _ in range(10)]
    assert agent.stop() == 0

    assert seqs == list(range(seqs[0], seqs[0] + 10))
    log = broker.log.read_text()
    # One CONNECT from the agent for the whole run: the handshake is paid once.
    assert log.count("as thunder10 (") == 1, log
