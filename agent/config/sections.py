"""The config's sections as frozen dataclasses: the schema, each key's default, bounds and choices on its field.

Built by agent/config/schema.py (load; the mqtt section by mqtt_section.py), read by every stage. A
new key is one field here (`setting(...)`, agent/config/fields.py), which makes it a known key; its
reading with `Reader.setting` (and any check beyond its type, bounds and choices); its row in
docs/configuration.md (tests/test_docs.py holds the row's key, default and choices to the field).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Tuple

from agent.config.fields import COMPUTED, DERIVED, REQUIRED, declared, derived, setting
from agent.config.sensor_config import SensorConfig

KEY_PASSWORD_ENV = "EDISON_AGENT_KEY_PASSWORD"  # noqa: S105 - a variable name, not a secret
DEFAULT_RUNTIME_DIR = "/run/edison-agent"
DEFAULT_STATE_DIR = "/var/lib/edison-agent"
# MQTT 5 expiry intervals are four-byte integers; 0xFFFFFFFF means "never".
MAX_EXPIRY = 0xFFFFFFFF
# The only defaults a target changes: what the service itself prescribes (see agent/config/targets.py).
AZURE_TOPIC = "devices/{device_id}/messages/events/"
AZURE_USERNAME = "{host}/{device_id}/?api-version=2021-04-12"


@dataclass(frozen=True)
class ReconnectConfig:
    min_delay: float = setting(1.0, minimum=0.1, maximum=3600)
    max_delay: float = setting(120.0, minimum=0.1, maximum=86400)
    # The window the first attempt after a lost connection is drawn from (later ones: windows
    # doubling from it, agent/mqtt/reconnect_schedule.py): a broker restart drops the whole fleet in one
    # instant. 30 s keeps 50 boards under 20% in any one second even after a 10 s outage, with a
    # margin for chance (at 15 s, 50 boards drawn at random exceed it in ~3% of restarts).
    spread: float = setting(30.0, minimum=0.0, maximum=86400)


@dataclass(frozen=True)
class TLSConfig:
    ca_file: Path = dataclasses.field(metadata=declared(REQUIRED))
    cert_file: Optional[Path] = dataclasses.field(metadata=declared(None))
    key_file: Optional[Path] = dataclasses.field(metadata=declared(None))
    # Its first line is the key's passphrase (else $EDISON_AGENT_KEY_PASSWORD).
    key_password_file: Optional[Path] = setting(None)
    # repr=False: a passphrase must never reach a log line or a traceback.
    key_password: Optional[str] = dataclasses.field(default=None, repr=False, metadata=DERIVED)
    key_password_source: Optional[str] = derived(None)
    # Below 1.2 is broken, and OpenSSL 3 will not speak it.
    min_version: str = setting("1.2", choices=("1.2", "1.3"))
    verify_hostname: bool = setting(True)
    # Offer the last TLS session on reconnect: a resumed handshake skips the certificates.
    session_resumption: bool = setting(True)
    # Protocols offered in the ClientHello's ALPN extension (AWS IoT Core on port 443: x-amzn-mqtt-ca).
    alpn: Tuple[str, ...] = setting(())
    # SNI and the name checked in the broker's certificate, when it is not mqtt.host.
    server_name: Optional[str] = setting(None, shown="`mqtt.host`")


@dataclass(frozen=True)
class MQTTConfig:
    # (host, port) is hosts[0]; mqtt.hosts or mqtt.host gives it.
    host: str = dataclasses.field(metadata=declared(REQUIRED))
    port: int = dataclasses.field(metadata=declared(8883, minimum=1, maximum=65535))
    client_id: str = dataclasses.field(metadata=declared(COMPUTED, shown="`device.id`"))
    keepalive: int = dataclasses.field(metadata=declared(60, minimum=5, maximum=65535))
    # QoS 2 is refused: the spool already de-duplicates by seq, and AWS IoT Core has no QoS 2.
    qos: int = dataclasses.field(metadata=declared(1, minimum=0, maximum=1, choices=(0, 1)))
    # Templates ({device_id}) in the config, resolved here.
    topic: str = dataclasses.field(metadata=declared("edison/{device_id}/telemetry"))
    status_topic: str = dataclasses.field(metadata=declared("edison/{device_id}/status"))
    # Sections of their own: mqtt.reconnect, mqtt.tls (none: plain MQTT).
    reconnect: ReconnectConfig
    tls: Optional[TLSConfig]
    # Retained health document (agent/service/health_report.py). No dataclass default for it or
    # hosts: the loader always gives both, so no config is built without them.
    health_topic: str = dataclasses.field(metadata=declared("edison/{device_id}/health"))
    # Every broker, the preferred first.
    hosts: Tuple[Tuple[str, int], ...] = dataclasses.field(metadata=declared(None))
    # False asks the broker to keep the session (and queued QoS 1 messages) across reconnects;
    # correctness never depends on it: the spool is the source of truth.
    clean_session: bool = setting(True)
    # Messages published but not yet acknowledged, at most: bounds a backlog's burst.
    inflight: int = setting(20, minimum=1, maximum=65535)
    protocol: str = setting("3.1.1", choices=("3.1.1", "5"))
    # MQTT 5: seconds the broker keeps the session after the connection ends (0: it ends with it).
    session_expiry: int = setting(0, minimum=0, maximum=MAX_EXPIRY)
    # MQTT 5: seconds a telemetry message may wait at the broker for a subscriber; None: forever.
    message_expiry: Optional[int] = setting(None, minimum=1, maximum=MAX_EXPIRY)
    # Sent without a password (the client certificate authenticates); Azure IoT Hub requires one.
    username: Optional[str] = setting(None)
    target: str = setting("generic", choices=("generic", "aws-iot", "azure-iot-hub"))
    # Seconds between looks at the preferred broker while on another; 0: never move back. Five
    # minutes: a gateway back from a reboot is used again soon, and a flapping one costs at most one
    # move in five minutes (the AWS IoT Device SDK and Telegraf have no failback at all; docs/fleet.md).
    failback: float = setting(300.0, minimum=0, maximum=86400)
    # Issue 19 (agent/config/broker.py): its first line is the password (else $EDISON_AGENT_MQTT_PASSWORD).
    password_file: Optional[Path] = setting(None)
    # repr=False: a password must never reach a log line.
    password: Optional[str] = dataclasses.field(default=None, repr=False, metadata=DERIVED)
    password_source: Optional[str] = derived(None)


@dataclass(frozen=True)
class SpoolConfig:
    path: Path = dataclasses.field(metadata=declared(COMPUTED, shown="`<state_dir>/spool.db`"))
    max_bytes: int = setting(64 * 1024 * 1024, minimum=64 * 1024, maximum=2 ** 40)
    # Ten years at most: a bound that keeps `now - max_age` a sane time on a 32-bit board.
    max_age: float = setting(7 * 24 * 3600.0, minimum=1.0, maximum=315360000)
    # At most one fsync per interval, whatever the sample rate: flash wears with every write.
    commit_interval: float = setting(1.0, minimum=0.0, maximum=3600)


@dataclass(frozen=True)
class BatchConfig:
    # The most readings in one message: the readings of one wake-up leave together up to this.
    max_readings: int = setting(100, minimum=1, maximum=1000)
    max_delay: float = setting(0.0, minimum=0.0, maximum=3600)


@dataclass(frozen=True)
class HealthConfig:
    # Seconds between health documents (topic and file); rides on the sampler's tick.
    # Each document is a retained publish and a file write: more than one a second is load, not health.
    interval: float = setting(60.0, minimum=1, maximum=86400,
                              too_low="must be at least 1 (seconds between health documents; default 60)")
    # Written atomically for `edison-agent status`; see default_health_file().
    file: Path = setting(COMPUTED, shown="`$RUNTIME_DIRECTORY/health.json`",
                         init=Path(DEFAULT_RUNTIME_DIR) / "health.json")


@dataclass(frozen=True)
class CommandsConfig:
    enabled: bool = setting(False)
    # Resolved topics (the {device_id} filled in): the agent subscribes to `<topic>/+`
    # and answers on `<reply_topic>/<id>`.
    topic: str = setting("edison/{device_id}/cmd")
    reply_topic: str = setting("edison/{device_id}/reply")
    # A token bucket: `rate` commands per second sustained, `burst` at once.
    rate: float = setting(5.0, minimum=0.01, maximum=1000)
    burst: int = setting(20, minimum=1, maximum=10000)
    # The bounds of set-interval, in seconds.
    min_interval: float = setting(1.0, minimum=0.01, maximum=86400)
    max_interval: float = setting(86400.0, minimum=0.01, maximum=86400)
    # Topic filters an MQTT 5 request's ResponseTopic may match besides `<reply_topic>/...`; the
    # agent's own topics are refused whatever these allow (see agent/service/commands.py).
    response_topics: Tuple[str, ...] = setting(())
    # The agent's telemetry, status and health topics (filled in at load): never a response topic.
    agent_topics: Tuple[str, ...] = derived((), compare=False)


@dataclass(frozen=True)
class HomeAssistantConfig:
    # MQTT discovery: each sensor channel announced as an entity (agent/service/discovery.py).
    discovery: bool = setting(False)
    # Home Assistant's discovery prefix (its MQTT integration's setting).
    prefix: str = setting("homeassistant")


@dataclass(frozen=True)
class AgentConfig:
    path: Path = dataclasses.field(metadata=DERIVED)
    # The short host name without device.id: `edison.local` would put a '.' in every topic and the client id.
    device_id: str = dataclasses.field(metadata=declared(COMPUTED, key="device.id", shown="the host name"))
    mqtt: MQTTConfig
    board: str = dataclasses.field(metadata=declared("auto", choices=("auto", "mraa", "simulated")))
    sensors: Tuple[SensorConfig, ...]
    # The loader always gives one: every run has its spool (an in-memory one only where a program
    # builds Spool() itself).
    spool: SpoolConfig
    log_level: str = setting("info", choices=("debug", "info", "warning", "error"))
    shutdown_timeout: float = setting(5.0, minimum=0.0, maximum=300)
    state_dir: Path = setting(Path(DEFAULT_STATE_DIR))
    # Sections of their own.
    batch: BatchConfig = BatchConfig()
    health: HealthConfig = HealthConfig()
    commands: CommandsConfig = CommandsConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()


# Where each config dataclass sits in config.yaml ("sensors[]": each sensor).
SECTIONS: Tuple[Tuple[str, type], ...] = (
    ("", AgentConfig), ("mqtt", MQTTConfig), ("mqtt.reconnect", ReconnectConfig), ("mqtt.tls", TLSConfig),
    ("spool", SpoolConfig), ("batch", BatchConfig), ("health", HealthConfig), ("commands", CommandsConfig),
    ("homeassistant", HomeAssistantConfig), ("sensors[]", SensorConfig))


def default_health_file(environ: Mapping[str, str] = os.environ) -> Path:
    """systemd's RuntimeDirectory= (given as $RUNTIME_DIRECTORY since systemd 240), else /run/edison-agent."""
    runtime = (environ.get("RUNTIME_DIRECTORY") or "").split(":")[0]
    return Path(runtime or DEFAULT_RUNTIME_DIR) / "health.json"
