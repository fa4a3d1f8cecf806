"""Issue 19 item 1: mqtt.hosts, failover between gateways and back, with every reading accounted for."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import yaml

from agent.config import schema as config
from conftest import Broker, Certs, Subscriber, agent_config


def _seqs(sub: Subscriber) -> List[int]:
    """Every telemetry seq the subscriber has received so far (duplicates kept)."""
    out: List[int] = []
    while True:
        try:
            topic, payload = sub.messages.get_nowait()
        except queue.Empty:
            return out
        if topic == "edison/thunder10/telemetry":
            out.extend(r["seq"] for r in json.loads(payload)["readings"])


def _health(cfg: Dict[str, Any], broker: str, timeout: float = 15.0) -> Dict[str, Any]:
    path = Path(cfg["health"]["file"])
    deadline = time.monotonic() + timeout
    document: Dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            document = {}
        if document.get("connection", {}).get("broker") == broker:
            return document
        time.sleep(0.1)
    raise AssertionError("health file never said broker %s: %s" % (broker, document))


def test_the_agent_moves_to_the_second_gateway_and_back_and_every_seq_arrives_once_per_move(
        certs: Certs, tmp_path: Path, run_agent: Callable[..., Any]) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Broker(tmp_path / "a", certs, certs.broker_cert, certs.broker_key)
    b = Broker(tmp_path / "b", certs, certs.broker_cert, certs.broker_key)
    a.start()
    b.start()
    subs = [Subscriber(a, certs), Subscriber(b, certs)]
    try:
        time.sleep(0.3)
        # Two names for 127.0.0.1, both in the broker certificate: each is checked against its own.
        cfg = agent_config(certs, a.port, health={"interval": 1},
                           mqtt={"hosts": ["127.0.0.1:%d" % a.port, "localhost:%d" % b.port], "failback": 10})
        del cfg["mqtt"]["host"]
        agent = run_agent(cfg)
        agent.wait_for("connected to 127.0.0.1:%d" % a.port)
        assert subs[0].telemetry()["device"] == "thunder10"
        _health(cfg, "127.0.0.1:%d" % a.port)

        # The preferred gateway goes away: the agent moves to the second.
        at = len(agent.lines)
        a.stop()
        agent.wait_for("connected to localhost:%d" % b.port, after=at)
        assert subs[1].telemetry()["device"] == "thunder10"
        _health(cfg, "localhost:%d" % b.port)

        # It comes back: within mqtt.failback the agent returns to it.
        a.start()
        subs.append(Subscriber(a, certs))
        time.sleep(0.3)
        at = len(agent.lines)
        agent.wait_for("moving back to the preferred broker 127.0.0.1:%d" % a.port, timeout=30, after=at)
        agent.wait_for("connected to 127.0.0.1:%d" % a.port, after=at)
        _health(cfg, "127.0.0.1:%d" % a.port)
        time.sleep(1.0)
        assert agent.stop() == 0
        last = int(agent.wait_for(r"stopped: \d+ readings delivered").split("stopped: ")[1].split()[0])
        time.sleep(1.0)  # the last messages reach the subscribers
        seen = [s for sub in subs for s in _seqs(sub)]
    finally:
        for sub in subs:
            sub.close()
        a.stop()
        b.stop()
    first = min(seen)
    # Nothing lost: every seq from the first one seen to the last delivered, at one broker or the other.
    assert set(range(first, last + 1)) - set(seen) == set()
    # Nothing duplicated beyond what QoS 1 allows across a move: the messages in flight when the
    # first gateway went (at most mqtt.inflight, 20); the failback waits for a moment with none.
    duplicates = len(seen) - len(set(seen))
    assert duplicates <= 20, duplicates


def test_each_host_is_checked_against_its_own_name_and_a_failing_one_is_passed_over(
        certs: Certs, tmp_path: Path, run_agent: Callable[..., Any]) -> None:
    (tmp_path / "wrong").mkdir()
    (tmp_path / "good").mkdir()
    # A gateway whose certificate names iotgateway1 only: reached as 127.0.0.1 it must be refused.
    wrong = Broker(tmp_path / "wrong", certs, certs.wrong_host_cert, certs.wrong_host_key)
    good = Broker(tmp_path / "good", certs, certs.broker_cert, certs.broker_key)
    wrong.start()
    good.start()
    try:
        cfg = agent_config(certs, wrong.port, mqtt={"hosts": ["127.0.0.1:%d" % wrong.port, "localhost:%d" % good.port]})
        del cfg["mqtt"]["host"]
        agent = run_agent(cfg)
        line = agent.wait_for("not valid for")
        assert "127.0.0.1:%d" % wrong.port in line and "'127.0.0.1'" in line, line
        agent.wait_for("connected to localhost:%d" % good.port)
        _health(cfg, "localhost:%d" % good.port)
    finally:
        wrong.stop()
        good.stop()


def _problems(tmp_path: Path, certs: Certs, **mqtt: Any) -> List[str]:
    cfg = agent_config(certs, 8883, mqtt=mqtt)
    if "hosts" in mqtt and "host" not in mqtt:
        del cfg["mqtt"]["host"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        config.load(path)
    except config.ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize("mqtt, words", [
    ({"host": "gw1", "hosts": ["gw2"]}, "mqtt.hosts: set mqtt.host (one broker) or mqtt.hosts"),
    ({"hosts": []}, "mqtt.hosts: expected a list like"),
    ({"hosts": ["gw1:99999"]}, "mqtt.hosts[0]: 'gw1:99999': the port must be a number from 1 to 65535"),
    ({"hosts": ["gw1", "gw1:8883"]}, "mqtt.hosts[1]: gw1:8883 is listed twice"),
    ({"hosts": ["gw1"], "failback": 2}, "mqtt.failback: 2"),
])
def test_bad_hosts_are_named_with_their_key(mqtt: Dict[str, Any], words: str, certs: Certs, tmp_path: Path) -> None:
    problems = _problems(tmp_path, certs, **mqtt)
    assert any(words in p for p in problems), problems


def test_hosts_keep_their_order_and_default_port(certs: Certs, tmp_path: Path) -> None:
    cfg = agent_config(certs, 8884, mqtt={"hosts": ["gw1", "gw2:1883", "[fd00::2]:8885"], "failback": 0})
    del cfg["mqtt"]["host"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    m = config.load(path).mqtt
    assert m.hosts == (("gw1", 8884), ("gw2", 1883), ("fd00::2", 8885))
    assert (m.host, m.port, m.failback) == ("gw1", 8884, 0.0)


def test_doctor_checks_every_gateway_in_hosts(certs: Certs, tmp_path: Path) -> None:
    from agent.tools.doctor import checkup as doctor

    (tmp_path / "a").mkdir()
    a = Broker(tmp_path / "a", certs, certs.broker_cert, certs.broker_key)
    a.start()
    closed = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key)  # never started: its port is closed
    try:
        cfg = agent_config(certs, a.port, mqtt={"hosts": ["localhost:%d" % a.port, "127.0.0.1:%d" % closed.port]})
        del cfg["mqtt"]["host"]
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        lines = [c.line() for c in doctor.run_checks(path)]
    finally:
        a.stop()
    text = "\n".join(lines)
    assert "ok       broker: localhost:%d (1 of 2 in mqtt.hosts)" % a.port in text
    assert "ok       mqtt connect: CONNACK accepted" in text
    assert "ok       broker: 127.0.0.1:%d (2 of 2 in mqtt.hosts)" % closed.port in text
    assert "PROBLEM  tcp: connection refused by 127.0.0.1:%d" % closed.port in text, text
