"""Home Assistant MQTT discovery: each sensor channel announced, kept current, and cleared when it goes.

Per channel, a retained config message on `<prefix>/<component>/<device>/<channel>/config`
(`binary_sensor` for a digital input, `sensor` otherwise). The entity's state comes from a
retained topic of its own, `edison/<device>/state/<channel>`, carrying that channel's latest
reading: on the shared telemetry topic a message holds other channels' readings (or a batch),
and a template there would have to render something for a message without its channel, which
Home Assistant shows as a blank or an error; a retained topic of its own also gives Home
Assistant the value at once when it restarts, and lets `expire_after` watch this one channel.
The price, only with discovery on: one more (QoS 0) publish per reading.

What was announced is kept in `<state_dir>/homeassistant.json`, so a channel removed from the
config (or discovery switched off, or the prefix changed) has its config message cleared (an
empty retained payload) at the next connect or reload; a topic leaves the file only once the
broker has acknowledged its clearing.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

from agent import __version__
from agent.atomic_file import replace_file
from agent.sampling.reading import Reading

if TYPE_CHECKING:
    from agent.config.schema import AgentConfig
    from agent.config.sensor_config import ChannelConfig, SensorConfig
    from agent.mqtt.session import Session

log = logging.getLogger(__name__)

STATE_FILE = "homeassistant.json"

# Home Assistant renders templates with `value` (the payload) and, when the payload parses as
# JSON, `value_json`. The online status is a JSON object; the Last Will is the plain text "offline".
AVAILABILITY_TEMPLATE = "{{ value_json.status if value_json is defined else value }}"
# A failed reading has a null value: "None" is what Home Assistant takes for "unknown".
SENSOR_TEMPLATE = "{{ 'None' if value_json.value is none else value_json.value }}"
BINARY_TEMPLATE = "{{ 'None' if value_json.value is none else ('ON' if value_json.value else 'OFF') }}"
ATTRIBUTES_TEMPLATE = ("{{ {'seq': value_json.seq, 'ts': value_json.ts, "
                       "'quality': value_json.quality | default('good')} | tojson }}")

# The agent's unit -> (Home Assistant's spelling, device_class or None).
UNITS: Dict[str, Tuple[str, Optional[str]]] = {
    "degC": ("°C", "temperature"), "°C": ("°C", "temperature"),
    "degF": ("°F", "temperature"), "°F": ("°F", "temperature"),
    "%RH": ("%", "humidity"),
    "hPa": ("hPa", "pressure"), "Pa": ("Pa", "pressure"), "kPa": ("kPa", "pressure"),
    "mbar": ("mbar", "pressure"), "bar": ("bar", "pressure"),
    "lx": ("lx", "illuminance"), "lux": ("lx", "illuminance"),
    "V": ("V", "voltage"), "mV": ("mV", "voltage"), "A": ("A", "current"), "mA": ("mA", "current"),
    "W": ("W", "power"), "dBm": ("dBm", "signal_strength"), "s": ("s", "duration"),
    "MiB": ("MiB", "data_size"), "GiB": ("GiB", "data_size"), "kB": ("kB", "data_size"),
    "MB": ("MB", "data_size"),
}
# Below this, an expiry would blank a healthy entity over one slow network round.
MIN_EXPIRY = 60

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def object_id(name: str) -> str:
    """A topic level Home Assistant accepts as node_id or object_id: [A-Za-z0-9_-]+."""
    return _UNSAFE.sub("_", name)


def state_topic(device_id: str, channel: str) -> str:
    return "edison/%s/state/%s" % (device_id, channel)


def state_payload(reading: Reading) -> bytes:
    """The channel's latest reading, as in the telemetry (with its seq and ts)."""
    return json.dumps(reading.as_json(), separators=(",", ":")).encode("utf-8")


def expire_after(sensor: SensorConfig, channel: ChannelConfig) -> Optional[int]:
    """Three readings missed, never under a minute; None when nothing bounds the silence (a
    deadband without max_silence publishes only on change)."""
    bound = sensor.interval
    deadband = channel.processing.deadband
    if deadband is not None:
        if deadband.max_silence is None:
            return None
        bound = max(bound, deadband.max_silence)
    return max(MIN_EXPIRY, int(math.ceil(3 * bound)))


def entities(config: AgentConfig, model: str) -> Dict[str, Dict[str, Any]]:
    """Config topic -> config payload, for every channel of every configured sensor."""
    prefix = config.homeassistant.prefix
    node = object_id(config.device_id)
    device = {"identifiers": ["edison-agent_%s" % config.device_id], "name": config.device_id,
              "manufacturer": "Intel", "model": model, "sw_version": "edison-agent %s" % __version__}
    availability = [{"topic": config.mqtt.status_topic, "value_template": AVAILABILITY_TEMPLATE,
                     "payload_available": "online", "payload_not_available": "offline"}]
    result: Dict[str, Dict[str, Any]] = {}
    for sensor in config.sensors:
        binary = sensor.type == "digital"
        for channel in sensor.channels:
            oid = object_id(channel.name)
            topic = state_topic(config.device_id, channel.name)
            entity: Dict[str, Any] = {
                "name": channel.name,
                # Stable across restarts and reloads: the device id and the channel's name.
                "unique_id": "edison-agent_%s_%s" % (node, oid),
                "state_topic": topic,
                "value_template": BINARY_TEMPLATE if binary else SENSOR_TEMPLATE,
                "json_attributes_topic": topic,
                "json_attributes_template": ATTRIBUTES_TEMPLATE,
                "availability": availability,
                "device": device,
                "origin": {"name": "edison-agent", "sw_version": __version__},
            }
            if not binary:
                _unit_fields(entity, channel.unit)
            expiry = expire_after(sensor, channel)
            if expiry is not None:
                entity["expire_after"] = expiry
            component = "binary_sensor" if binary else "sensor"
            result["%s/%s/%s/%s/config" % (prefix, component, node, oid)] = entity
    return result


def _unit_fields(entity: Dict[str, Any], unit: Optional[str]) -> None:
    if unit is None:
        return
    spelled, device_class = UNITS.get(unit, (unit, None))
    entity["unit_of_measurement"] = spelled
    if device_class is not None:
        entity["device_class"] = device_class
    # A unit means a number that is measured: Home Assistant keeps its statistics.
    entity["state_class"] = "measurement"


class Discovery:
    """Announces a config's entities and clears those announced before that it no longer has."""

    def __init__(self, config: AgentConfig, model: str) -> None:
        self._path = Path(config.state_dir) / STATE_FILE
        self._enabled = config.homeassistant.discovery
        self._device_id = config.device_id
        self._entities = entities(config, model) if self._enabled else {}
        # Written by the main thread (reload) and the network thread (connect, acks).
        self._lock = threading.Lock()
        self._clearing: Set[str] = set()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def state(self, reading: Reading) -> Optional[Tuple[str, bytes]]:
        """The retained state message for a reading; None with discovery off."""
        if not self._enabled:
            return None
        return state_topic(self._device_id, reading.sensor), state_payload(reading)

    def announce(self, session: Session) -> None:
        """Publish every entity's config (retained, QoS 1) and clear what is no longer configured."""
        with self._lock:
            stale = self._announced() - set(self._entities)
            self._clearing = set(stale)
            # Written before publishing: a crash in between leaves a topic to clear next time, never an orphan.
            self._save()
        for topic, entity in self._entities.items():
            session.publish(topic, json.dumps(entity, separators=(",", ":")).encode("utf-8"), qos=1, retain=True)
        for topic in sorted(stale):
            session.publish(topic, b"", qos=1, retain=True, on_ack=self._cleared(topic))
        if stale:
            log.info("home assistant: cleared %d entities no longer configured", len(stale))
        if self._entities:
            log.debug("home assistant: announced %d entities", len(self._entities))

    def _cleared(self, topic: str) -> Any:
        def done() -> None:
            with self._lock:
                self._clearing.discard(topic)
                self._save()
        return done

    def _announced(self) -> Set[str]:
        try:
            tree = json.loads(self._path.read_text(encoding="utf-8"))
            return {str(t) for t in tree.get("announced", [])}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("home assistant: cannot read %s (%s): entities removed from the config earlier stay "
                        "in Home Assistant; clear them with mosquitto_pub -r -n -t <topic>", self._path, exc)
            return set()

    def _save(self) -> None:
        topics: List[str] = sorted(set(self._entities) | self._clearing)
        text = json.dumps({"announced": topics}, indent=1) + "\n"
        # Only when it changes: every connect announces, and the file lives on flash.
        try:
            if self._path.read_text(encoding="utf-8") == text:
                return
        except (OSError, ValueError):
            if not topics:
                return
        try:
            replace_file(self._path, text.encode("utf-8"), 0o644, durable=True)
        except OSError as exc:
            log.warning("home assistant: cannot write %s (%s): a sensor removed later will not be cleared "
                        "from Home Assistant by itself", self._path, exc.strerror or exc)
