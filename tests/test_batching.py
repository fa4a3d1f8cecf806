"""The default batching: the readings of one wake-up leave in one message, without waiting.

Sensors due at the same moment are read in one wake-up of the schedule; their readings go out
together in one telemetry message (the message carries a list), up to batch.max_readings.
Nothing waits for more readings unless batch.max_delay says so, and `max_readings: 1` keeps a
message per reading.
"""

from __future__ import annotations

from typing import Any, Dict, List

from conftest import agent_config


def _sensors(count: int, interval: float) -> List[Dict[str, Any]]:
    # Analog sensors are read on the schedule's own thread; phase 0 puts them all in one wake-up.
    return [{"name": "s%d" % i, "type": "analog", "pin": i % 6, "interval": interval, "unit": "degC"}
            for i in range(count)]


def test_by_default_the_readings_of_one_wake_up_leave_in_one_message(certs, broker, subscriber, run_agent):
    cfg = agent_config(certs, broker.port, sensors=_sensors(3, 0.5))
    agent = run_agent(cfg)
    messages = [subscriber.telemetry()["readings"] for _ in range(4)]
    assert agent.stop() == 0
    for readings in messages:
        assert sorted(r["sensor"] for r in readings) == ["s0", "s1", "s2"]
        seqs = [r["seq"] for r in readings]
        assert seqs == sorted(seqs)


def test_a_wake_up_with_more_readings_than_max_readings_is_split_in_order(certs, broker, subscriber, run_agent):
    cfg = agent_config(certs, broker.port, sensors=_sensors(5, 0.5), batch={"max_readings": 2})
    agent = run_agent(cfg)
    sizes, seqs = [], []
    # Enough messages to get past any backlog gathered while connecting.
    for _ in range(12):
        readings = subscriber.telemetry()["readings"]
        sizes.append(len(readings))
        seqs += [r["seq"] for r in readings]
    assert agent.stop() == 0
    # Each wake-up of five leaves as 2 + 2 + 1 (the first messages may carry what waited for the connection).
    assert sorted(sizes[-6:]) == [1, 1, 2, 2, 2, 2]
    assert seqs == sorted(seqs)


def test_max_readings_1_keeps_a_message_per_reading(certs, broker, subscriber, run_agent):
    cfg = agent_config(certs, broker.port, sensors=_sensors(3, 0.5), batch={"max_readings": 1})
    agent = run_agent(cfg)
    messages = [subscriber.telemetry()["readings"] for _ in range(6)]
    assert agent.stop() == 0
    assert [len(readings) for readings in messages] == [1] * 6
    assert {r["sensor"] for readings in messages for r in readings} == {"s0", "s1", "s2"}
