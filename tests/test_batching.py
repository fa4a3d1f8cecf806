"""The default batching: the readings of one wake-up leave in one message, without waiting.

Sensors due at the same moment are read in one wake-up of the schedule; their readings go out
together in one telemetry message (the message carries a list), up to batch.max_readings.
Nothing waits for more readings unless batch.max_delay says so, and `max_readings: 1` keeps a
message per reading.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import yaml
from test_delivery import Pump

from agent.config import schema as config
from agent.delivery.spool import Spool
from agent.delivery.uplink import Uplink
from agent.mqtt import tls
from agent.mqtt.session import Session
from agent.sampling.reading import Sample
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


def test_a_reload_that_changes_only_batch_leaves_one_uplink_counting_every_delivery(
        certs, broker, subscriber, run_agent):
    # A partial batch waits max_delay; the reload comes while it waits, and makes the wait an hour.
    cfg = agent_config(certs, broker.port, batch={"max_readings": 1000, "max_delay": 4})
    agent = run_agent(cfg)
    path = Path(agent.proc.args[-1])
    subscriber.online()
    cfg["batch"] = {"max_readings": 1000, "max_delay": 3600}
    path.write_text(yaml.safe_dump(cfg))
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for("reloaded .*: batching")
    # Past the first config's max_delay: a timer left from it would have sent its batch by now.
    time.sleep(6)
    assert agent.stop() == 0
    delivered = int(agent.wait_for(r"stopped: \d+ readings delivered").split("stopped: ")[1].split()[0])
    assert delivered > 0
    # What the broker received is what the agent counts as delivered: nothing counted into a
    # discarded object. The drain at stop sends what waited; collect until it is all in.
    seqs: List[int] = []
    while len(seqs) < delivered:
        seqs += [r["seq"] for r in subscriber.telemetry(timeout=10)["readings"]]
    with contextlib.suppress(AssertionError):
        while True:
            seqs += [r["seq"] for r in subscriber.telemetry(timeout=1)["readings"]]
    assert len(seqs) == delivered
    assert seqs == list(range(seqs[0], seqs[0] + delivered))




def _uplink_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "uplink-batch"]


def test_a_partial_batch_waits_on_one_thread_per_uplink_which_ends_when_the_uplink_retires(certs, broker, tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, broker.port, batch={"max_readings": 100, "max_delay": 60})))
    cfg = config.load(path)
    assert cfg.mqtt.tls is not None and not _uplink_threads()
    spool = Spool()
    session = Session(cfg.mqtt, tls.build_context(cfg.mqtt.tls))
    uplink = Uplink(spool, session, cfg.device_id, cfg.mqtt.topic, 1, window=cfg.mqtt.inflight, batch=cfg.batch)
    session.listen(Pump(uplink))
    session.start()
    try:
        assert session.wait_connected(15)
        for i in range(5):  # partial batches, one after another: still the one thread
            spool.append(Sample("t", i, "C", time.time()))
            uplink.pump()
        assert len(_uplink_threads()) == 1 and spool.in_flight == 0  # waiting for max_delay
        uplink.retire()
        deadline = time.monotonic() + 10
        while _uplink_threads():
            assert time.monotonic() < deadline, "the retired uplink's thread is still there"
            time.sleep(0.01)
    finally:
        session.stop(5)
