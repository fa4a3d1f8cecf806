"""MQTT 5 against a real mosquitto: content type and message expiry on the wire, the session kept by
session_expiry, and the broker's reason codes in the log and in `doctor`."""

from __future__ import annotations

import json
import queue
import signal
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Set, Tuple

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt import wire as mqtt_wire
from agent.tools.doctor import checkup as doctor
from conftest import Broker, Certs, agent_config

STATUS = "edison/thunder10/status"
TELEMETRY = "edison/thunder10/telemetry"


def _client(certs: Certs, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.monitor_cert), str(certs.monitor_key))
    client.tls_set_context(ctx)
    return client


class Subscriber5:
    """An MQTT 5 subscriber (paho, independent of the agent's session) that keeps each message's properties."""

    def __init__(self, broker: Broker, certs: Certs) -> None:
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        subscribed = threading.Event()
        self.client = _client(certs, "subscriber5")
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("edison/#", qos=1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.wait(15), "the MQTT 5 subscriber did not subscribe"

    def next(self, topic: str, payload: Optional[bytes] = None, timeout: float = 20.0) -> mqtt.MQTTMessage:
        # A deadline for the whole wait: telemetry on other topics keeps arriving meanwhile.
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next_of({topic}, max(0.0, deadline - time.monotonic()))
            if payload is None or msg.payload == payload:
                return msg

    def online(self) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + 20.0
        while True:
            msg = self.next(STATUS, timeout=max(0.0, deadline - time.monotonic()))
            if msg.payload.startswith(b"{") and json.loads(msg.payload)["status"] == "online":
                return msg

    def next_of(self, topics: Set[str], timeout: float = 20.0) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no message on %s within %.0f s" % (sorted(topics), timeout)) from None
            if msg.topic in topics:
                return msg

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber5(broker: Broker, certs: Certs) -> Iterator[Subscriber5]:
    s = Subscriber5(broker, certs)
    yield s
    s.close()


def _connack(certs: Certs, broker: Broker, client_id: str, expiry: int = 0) -> Tuple[bool, Any]:
    """Connect once as `client_id` without a clean start: (session present, reason code)."""
    answer: "queue.Queue[Tuple[bool, Any]]" = queue.Queue()
    client = _client(certs, client_id)
    client.on_connect = lambda c, u, flags, rc, p: answer.put((flags.session_present, rc))
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = expiry
    client.connect("127.0.0.1", broker.port, clean_start=False, properties=properties)
    client.loop_start()
    try:
        return answer.get(timeout=15)
    finally:
        client.disconnect()
        client.loop_stop()


def test_mqtt5_messages_carry_their_content_type_and_the_telemetry_its_expiry(broker, certs, run_agent,
                                                                               subscriber5):
    agent = run_agent(agent_config(certs, broker.port, mqtt={"protocol": 5, "message_expiry": 600}))
    agent.wait_for(r"connected to 127\.0\.0\.1:%d, TLSv1\.[23] .*, MQTT 5, new session" % broker.port)

    online = subscriber5.online()
    # The online status is a JSON object (it says where the run's seqs start); the Will stays text.
    assert online.properties.ContentType == "application/json"
    # The retained status must not expire: a late subscriber still learns the device is online.
    assert not hasattr(online.properties, "MessageExpiryInterval")

    telemetry = subscriber5.next(TELEMETRY)
    assert telemetry.properties.ContentType == "application/json"
    assert 0 < telemetry.properties.MessageExpiryInterval <= 600
    assert json.loads(telemetry.payload)["device"] == "thunder10"

    assert agent.stop() == 0
    offline = subscriber5.next(STATUS, b"offline")
    assert offline.properties.ContentType == "text/plain"


@pytest.mark.parametrize("expiry, kept", [(300, True), (0, False)])
def test_the_broker_keeps_the_session_of_a_killed_agent_for_session_expiry(broker, certs, run_agent, subscriber5,
                                                                           expiry, kept):
    cfg = agent_config(certs, broker.port, mqtt={"protocol": "5", "session_expiry": expiry})
    agent = run_agent(cfg)
    agent.wait_for("connected to")
    subscriber5.online()
    agent.stop(signal.SIGKILL)
    # The Last Will shows the broker has handled the dead connection (and what became of its session).
    will = subscriber5.next(STATUS, b"offline")
    assert will.properties.ContentType == "text/plain"

    session_present, _ = _connack(certs, broker, "thunder10")
    assert session_present is kept


def test_a_reconnect_resumes_the_session_instead_of_starting_clean(broker, certs, run_agent):
    cfg = agent_config(certs, broker.port, mqtt={"protocol": 5, "session_expiry": 300})
    agent = run_agent(cfg)
    agent.wait_for("connected to .*MQTT 5, new session")
    mark = len(agent.lines)

    # Another client with the agent's id takes its session over, and the agent loses its connection.
    session_present, _ = _connack(certs, broker, "thunder10", expiry=300)
    assert session_present

    agent.wait_for("connection lost", after=mark)
    # Its reconnect asks for the session back (no clean start), and the broker has kept it.
    agent.wait_for("connected to 127.0.0.1:%d again, .*MQTT 5, session present" % broker.port, after=mark)


@pytest.fixture
def small_packet_broker(tmp_path: Path, certs: Certs) -> Iterator[Broker]:
    """A mosquitto that takes no packet over 200 bytes: the status fits, a batch of readings does not."""
    b = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key)
    b.conf.write_text(b.conf.read_text() + "max_packet_size 200\n")
    b.start()
    yield b
    b.stop()


def test_a_disconnect_from_the_broker_is_logged_with_its_reason_code(small_packet_broker, certs, run_agent):
    cfg = agent_config(certs, small_packet_broker.port, mqtt={"protocol": 5},
                       batch={"max_readings": 5, "max_delay": 10})
    agent = run_agent(cfg)
    agent.wait_for("connected to")

    line = agent.wait_for("broker sent DISCONNECT", timeout=20)
    assert "reason code 149 (0x95), packet too large: lower batch.max_readings" in line
    lost = agent.wait_for("connection lost")
    assert "connection lost: broker sent DISCONNECT (reason code 149 (0x95)" in lost


@pytest.fixture
def picky_broker(tmp_path: Path, certs: Certs) -> Iterator[Broker]:
    """A mosquitto that refuses every client id not starting with 'gateway-'."""
    b = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key)
    b.conf.write_text(b.conf.read_text() + "clientid_prefixes gateway-\n")
    b.start()
    yield b
    b.stop()


def test_a_refused_mqtt5_connect_shows_the_reason_code_in_the_log_and_in_doctor(picky_broker, certs, run_agent,
                                                                                tmp_path):
    cfg = agent_config(certs, picky_broker.port, mqtt={"protocol": 5})
    agent = run_agent(cfg)
    line = agent.wait_for("broker refused the connection")
    assert "reason code 135 (0x87), not authorized" in line
    assert line.endswith("retrying with backoff (0.2-1 s)")

    path = tmp_path / "doctor.yaml"
    path.write_text(yaml.safe_dump(cfg))
    checks = {c.check: c for c in doctor.run_checks(path)}
    assert checks["mqtt connect"].status == doctor.PROBLEM
    assert "MQTT 5 CONNACK reason code 135 (0x87), not authorized" in checks["mqtt connect"].detail


def test_doctor_connects_with_mqtt5_and_reports_the_reason_code(broker, certs, tmp_path):
    path = tmp_path / "doctor.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, broker.port, mqtt={"protocol": 5})))
    checks = {c.check: c for c in doctor.run_checks(path)}
    assert checks["mqtt connect"].status == doctor.OK, checks["mqtt connect"]
    assert checks["mqtt connect"].detail == "CONNACK accepted client id 'thunder10' (MQTT 5, reason code 0 " \
                                            "(0x00), success)"


def test_doctor_reads_a_reason_string_among_the_connack_properties():
    # Receive Maximum (2 bytes), then a Reason String: what a broker such as EMQX may send.
    properties = b"\x21\x00\x0a" + b"\x1f" + len(b"quota used up").to_bytes(2, "big") + b"quota used up"
    assert mqtt_wire.reason_string(properties) == "quota used up"
    assert mqtt_wire.reason_string(b"\x21\x00\x0a") is None


def test_a_v5_command_is_answered_on_its_response_topic_with_its_correlation_data(certs, broker, subscriber5,
                                                                                   run_agent):
    cfg = agent_config(certs, broker.port, mqtt={"protocol": 5},
                       commands={"enabled": True, "response_topics": ["edison/console/#"]})
    agent = run_agent(cfg)
    agent.wait_for(r"subscribed to edison/thunder10/cmd/\+", timeout=30)
    request = Properties(PacketTypes.PUBLISH)
    request.ResponseTopic = "edison/console/answers"
    request.CorrelationData = b"\x00req-42"
    subscriber5.client.publish("edison/thunder10/cmd/ping", json.dumps({"id": "p5"}), qos=1, properties=request)
    wanted = {"edison/console/answers", "edison/thunder10/reply/p5"}
    seen: Dict[str, mqtt.MQTTMessage] = {}
    while not wanted <= set(seen):
        msg = subscriber5.next_of(wanted)
        seen[msg.topic] = msg
    answer = seen["edison/console/answers"]
    assert json.loads(answer.payload)["id"] == "p5" and json.loads(answer.payload)["ok"] is True
    assert answer.properties is not None
    # paho's Properties takes its fields by name at run time; they are not declared to mypy.
    assert answer.properties.CorrelationData == b"\x00req-42"  # type: ignore[attr-defined]
    # The usual reply topic gets its copy too, for operators that do not speak MQTT 5.
    assert json.loads(seen["edison/thunder10/reply/p5"].payload)["ok"] is True


def test_a_reload_that_replaces_the_session_resumes_it_at_the_broker(broker, certs, run_agent):
    cfg = agent_config(certs, broker.port, mqtt={"protocol": 5, "session_expiry": 300})
    agent = run_agent(cfg)
    agent.wait_for("connected to .*MQTT 5, new session")
    path = Path(agent.proc.args[-1])
    mark = len(agent.lines)
    # A broker setting changes: the agent replaces its session object, but not the session the
    # broker keeps for this client (its queued messages, its subscriptions).
    cfg["mqtt"]["keepalive"] = 30
    path.write_text(yaml.safe_dump(cfg))
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for(r"reloaded .*broker session \(reconnected\)", after=mark)
    agent.wait_for("connected to .*MQTT 5, session present", after=mark)
