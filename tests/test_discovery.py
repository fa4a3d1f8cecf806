"""Home Assistant MQTT discovery against a real mosquitto: what Home Assistant receives, and how it
renders it (its templates, through Jinja2 as Home Assistant calls them, on the agent's real messages)."""

from __future__ import annotations

import json
import queue
import signal
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import jinja2
import jinja2.sandbox
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.sampling.reading import ERROR, Reading
from agent.service.discovery import BINARY_TEMPLATE, SENSOR_TEMPLATE, state_payload
from conftest import Broker, Certs, agent_config

PREFIX = "homeassistant"
STATUS = "edison/thunder10/status"


class Listener:
    """A paho client of the test's own (not the agent's session) that keeps topic, payload and retain flag."""

    def __init__(self, broker: Broker, certs: Certs, *filters: str) -> None:
        self.messages: "queue.Queue[Tuple[str, bytes, bool]]" = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="listener-%f" % time.monotonic())
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        ctx.load_cert_chain(str(certs.monitor_cert), str(certs.monitor_key))
        self.client.tls_set_context(ctx)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload), bool(m.retain)))
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(f, 1) for f in filters])
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.wait(15), "the listener did not subscribe"

    def collect(self, seconds: float) -> List[Tuple[str, bytes, bool]]:
        """Everything that arrives within `seconds` (retained messages come at once after subscribing)."""
        got = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                got.append(self.messages.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return got

    def next(self, topic: str, timeout: float = 15.0, where: Any = lambda payload: True) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got_topic, payload, _ = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("nothing on %s within %.0f s" % (topic, timeout)) from None
            if got_topic == topic and where(payload):
                return payload

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(broker: Broker, certs: Certs, topic_filter: str) -> Dict[str, bytes]:
    """What a client subscribing now gets at once: the retained messages under `topic_filter`."""
    listener = Listener(broker, certs, topic_filter)
    try:
        return {topic: payload for topic, payload, kept in listener.collect(2.0) if kept}
    finally:
        listener.close()


def retained_becomes(broker: Broker, certs: Certs, topic_filter: str, expected: Any) -> None:
    """Polls (the clearing is published after the log line says so) until the retained topics are `expected`."""
    deadline = time.monotonic() + 30
    while True:
        topics = set(retained(broker, certs, topic_filter))
        if topics == expected:
            return
        assert time.monotonic() < deadline, "retained under %s: %s, expected %s" % (topic_filter, topics, expected)


def config_with_sensors(certs: Certs, port: int, sensors: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
    cfg = agent_config(certs, port, **extra)
    cfg["sensors"] = sensors
    cfg["homeassistant"] = {"discovery": True}
    return cfg


TEMPERATURE = {"name": "temperature", "type": "analog", "pin": 0, "interval": 0.3, "scale": 0.5, "offset": -50,
               "unit": "degC"}
ENV = {"name": "env", "type": "bme280", "interval": 0.5}
DOOR = {"name": "door", "type": "digital", "pin": 4, "pull": "up", "interval": 0.5}


ALL_FIVE = {
    "homeassistant/sensor/thunder10/temperature/config",
    "homeassistant/sensor/thunder10/env_temperature/config",
    "homeassistant/sensor/thunder10/env_humidity/config",
    "homeassistant/sensor/thunder10/env_pressure/config",
    "homeassistant/binary_sensor/thunder10/door/config",
}


def render(template: str, payload: bytes) -> str:
    """As Home Assistant renders an MQTT template: a sandbox, `value` the payload as text and
    `value_json` only when it parses as JSON. Strict about undefined names, which Home Assistant
    only logs: a template that relies on one fails here."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    text = payload.decode("utf-8")
    variables: Dict[str, Any] = {"value": text}
    try:
        variables["value_json"] = json.loads(text)
    except ValueError:
        pass
    return env.from_string(template).render(**variables).strip()


def wait_for_configs(listener: Listener, count: int) -> Dict[str, Dict[str, Any]]:
    configs: Dict[str, Dict[str, Any]] = {}
    deadline = time.monotonic() + 20
    while len(configs) < count and time.monotonic() < deadline:
        for topic, payload, _ in listener.collect(1.0):
            if topic.endswith("/config") and payload:
                configs[topic] = json.loads(payload)
    return configs


def test_each_channel_is_announced_retained_as_home_assistant_expects(certs, broker, run_agent):
    agent = run_agent(config_with_sensors(certs, broker.port, [TEMPERATURE, ENV, DOOR]))
    agent.wait_for("connected to")
    retained_becomes(broker, certs, PREFIX + "/#", ALL_FIVE)
    configs = {t: json.loads(p) for t, p in retained(broker, certs, PREFIX + "/#").items()}
    temperature = configs["homeassistant/sensor/thunder10/temperature/config"]
    assert temperature["unique_id"] == "edison-agent_thunder10_temperature"
    assert temperature["name"] == "temperature"
    assert temperature["state_topic"] == "edison/thunder10/state/temperature"
    # Home Assistant's spelling of the unit, and what it means to it.
    assert (temperature["unit_of_measurement"], temperature["device_class"], temperature["state_class"]) == (
        "°C", "temperature", "measurement")
    assert temperature["availability"][0]["topic"] == STATUS
    # Three intervals of 0.3 s would blank the entity at every hiccup: never under a minute.
    assert temperature["expire_after"] == 60
    device = temperature["device"]
    assert device["identifiers"] == ["edison-agent_thunder10"] and device["name"] == "thunder10"
    assert device["model"] == "simulated board" and device["sw_version"].startswith("edison-agent ")
    # One device, the board, for all of its entities.
    assert all(c["device"] == device for c in configs.values())
    assert len({c["unique_id"] for c in configs.values()}) == 5

    humidity = configs["homeassistant/sensor/thunder10/env_humidity/config"]
    assert (humidity["unit_of_measurement"], humidity["device_class"]) == ("%", "humidity")
    pressure = configs["homeassistant/sensor/thunder10/env_pressure/config"]
    assert (pressure["unit_of_measurement"], pressure["device_class"]) == ("hPa", "pressure")
    door = configs["homeassistant/binary_sensor/thunder10/door/config"]
    assert "unit_of_measurement" not in door and "state_class" not in door
    assert agent.stop() == 0


def test_unique_ids_and_configs_are_the_same_after_a_restart(certs, broker, run_agent):
    cfg = config_with_sensors(certs, broker.port, [TEMPERATURE, ENV])
    first = run_agent(cfg)
    first.wait_for("connected to")
    retained_becomes(broker, certs, PREFIX + "/#", {t for t in ALL_FIVE if "door" not in t})
    before = retained(broker, certs, PREFIX + "/#")
    assert first.stop() == 0

    listener = Listener(broker, certs, PREFIX + "/#")
    try:
        listener.collect(1.0)  # the retained ones
        second = run_agent(cfg)
        # Announced again at connect (a broker without persistence has lost them), the same.
        again = wait_for_configs(listener, len(before))
    finally:
        listener.close()
    assert {t: json.loads(p) for t, p in before.items()} == again
    assert second.stop() == 0


def test_a_sensor_removed_from_the_config_is_cleared_at_reload_and_at_the_next_start(certs, broker, run_agent,
                                                                                     tmp_path):
    cfg = config_with_sensors(certs, broker.port, [TEMPERATURE, ENV, DOOR])
    agent = run_agent(cfg)
    agent.wait_for("connected to")
    retained_becomes(broker, certs, PREFIX + "/#", ALL_FIVE)
    config_file = Path(agent.proc.args[-1])

    # Reload without the bme280: its three entities go.
    cfg["sensors"] = [TEMPERATURE, DOOR]
    config_file.write_text(yaml.safe_dump(cfg))
    listener = Listener(broker, certs, PREFIX + "/#")
    try:
        listener.collect(1.0)
        agent.proc.send_signal(signal.SIGHUP)
        gone = {PREFIX + "/sensor/thunder10/env_%s/config" % c for c in ("temperature", "humidity", "pressure")}
        cleared: Set[str] = set()
        deadline = time.monotonic() + 20
        while cleared != gone and time.monotonic() < deadline:
            cleared |= {t for t, p, _ in listener.collect(1.0) if p == b""}
    finally:
        listener.close()
    # An empty retained payload: Home Assistant removes the entity, the broker forgets the message.
    assert cleared == gone
    agent.wait_for("cleared 3 entities")
    retained_becomes(broker, certs, PREFIX + "/#", {
        "homeassistant/sensor/thunder10/temperature/config", "homeassistant/binary_sensor/thunder10/door/config"})
    assert agent.stop() == 0

    # Stopped, the door goes from the config: the next start clears it.
    cfg["sensors"] = [TEMPERATURE]
    config_file.write_text(yaml.safe_dump(cfg))
    again = run_agent(cfg)
    again.wait_for("cleared 1 entities")
    retained_becomes(broker, certs, PREFIX + "/#", {"homeassistant/sensor/thunder10/temperature/config"})

    # Discovery switched off: what it announced goes too.
    assert again.stop() == 0
    cfg["homeassistant"] = {"discovery": False}
    off = run_agent(cfg)
    off.wait_for("cleared 1 entities")
    retained_becomes(broker, certs, PREFIX + "/#", set())
    assert off.stop() == 0


def test_the_templates_render_each_entitys_latest_value_from_real_telemetry(certs, broker, run_agent):
    listener = Listener(broker, certs, "edison/#", PREFIX + "/#")
    try:
        # Batches of several channels' readings: the telemetry message never carries just one entity's.
        agent = run_agent(config_with_sensors(certs, broker.port, [TEMPERATURE, ENV, DOOR],
                                              batch={"max_readings": 4, "max_delay": 0.5}))
        messages = listener.collect(5.0)
        # A clean stop delivers every batch, then says offline (the same text as the Last Will).
        assert agent.stop() == 0
        deadline = time.monotonic() + 20
        while not any(t == STATUS and p == b"offline" for t, p, _ in messages):
            assert time.monotonic() < deadline, "no offline status"
            messages += listener.collect(1.0)
    finally:
        listener.close()
    offline = next(p for t, p, _ in messages if t == STATUS and not p.startswith(b"{"))
    configs = {t: json.loads(p) for t, p, _ in messages if t.startswith(PREFIX + "/") and p}
    telemetry = [json.loads(p) for t, p, _ in messages if t.endswith("/telemetry")]
    latest: Dict[str, Any] = {}
    for message in telemetry:
        for reading in message["readings"]:
            latest[reading["sensor"]] = reading
    # Several channels in one message: on that topic a template for one would have nothing to show.
    assert any(len({r["sensor"] for r in m["readings"]}) > 1 for m in telemetry)

    for entity in configs.values():
        channel = entity["name"]
        states = [p for t, p, _ in messages if t == entity["state_topic"]]
        assert states, "no state for %s" % channel
        # Every message on the entity's state topic renders to a value: it never goes blank.
        rendered = [render(entity["value_template"], p) for p in states]
        assert all(r not in ("", "None") for r in rendered), rendered
        newest = json.loads(states[-1])
        assert newest["seq"] == latest[channel]["seq"]
        if entity["state_topic"].endswith("/door"):
            assert rendered[-1] == ("ON" if latest[channel]["value"] else "OFF")
        else:
            assert float(rendered[-1]) == latest[channel]["value"]
        attributes = json.loads(render(entity["json_attributes_template"], states[-1]))
        assert attributes == {"seq": latest[channel]["seq"], "ts": latest[channel]["ts"], "quality": "good"}

        availability = entity["availability"][0]
        online = next(p for t, p, _ in messages if t == STATUS and p.startswith(b"{"))
        assert render(availability["value_template"], online) == availability["payload_available"]
        # Offline, plain text (a clean stop's, or the Last Will's): the entity becomes unavailable.
        assert render(availability["value_template"], offline) == availability["payload_not_available"]


def test_the_last_will_makes_the_entities_unavailable_for_a_home_assistant_that_starts_later(certs, broker,
                                                                                           run_agent):
    agent = run_agent(config_with_sensors(certs, broker.port, [TEMPERATURE]))
    agent.wait_for("connected to")
    retained_becomes(broker, certs, PREFIX + "/#", {"homeassistant/sensor/thunder10/temperature/config"})
    (entity,) = [json.loads(p) for p in retained(broker, certs, PREFIX + "/#").values()]
    availability = entity["availability"][0]
    online = retained(broker, certs, STATUS)[STATUS]
    assert render(availability["value_template"], online) == "online"
    agent.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while retained(broker, certs, STATUS).get(STATUS) != b"offline":
        assert time.monotonic() < deadline, "the broker never published the Last Will"
    # What Home Assistant gets when it subscribes after the board died: the retained Will.
    assert render(availability["value_template"], retained(broker, certs, STATUS)[STATUS]) == "offline"


def test_a_failed_reading_renders_as_unknown_not_as_a_number():
    # A reading whose sensor failed, as the agent publishes it (quality error, value null).
    failed = state_payload(Reading(seq=9, ts=1764201234.125, sensor="temperature", value=None, unit="degC",
                                   quality=ERROR, error="A0 reads 0"))
    assert render(SENSOR_TEMPLATE, failed) == "None"
    assert render(BINARY_TEMPLATE, failed) == "None"
