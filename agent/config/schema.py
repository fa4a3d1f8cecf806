"""config.yaml -> frozen dataclasses, with every problem reported at once by its key path."""

from __future__ import annotations

import dataclasses
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from agent.config import broker as config_broker
from agent.config import checks as config_checks
from agent.config import identifiers
from agent.config.identifiers import brief
from agent.config.reader import FileProblem, Reader, bounded, kind_of, parse_yaml, read_text, setting
from agent.config.sensor_config import SensorConfig, parse_sensors

KEY_PASSWORD_ENV = "EDISON_AGENT_KEY_PASSWORD"  # noqa: S105 - a variable name, not a secret
BOARDS = ("auto", "mraa", "simulated")
LOG_LEVELS = ("debug", "info", "warning", "error")
TLS_VERSIONS = ("1.2", "1.3")
TOPIC_FIELDS = ("device_id",)
# The known keys of each section: anything else is reported as unknown.
TOP_KEYS = ("device", "mqtt", "board", "sensors", "log_level", "shutdown_timeout", "state_dir", "spool", "batch",
            "health", "commands", "homeassistant")
SPOOL_KEYS = ("path", "max_bytes", "max_age", "commit_interval")
BATCH_KEYS = ("max_readings", "max_delay")
HEALTH_KEYS = ("interval", "file")
HOMEASSISTANT_KEYS = ("discovery", "prefix")
COMMANDS_KEYS = ("enabled", "topic", "reply_topic", "rate", "burst", "min_interval", "max_interval",
                 "response_topics")
DEFAULT_RUNTIME_DIR = "/run/edison-agent"
DEFAULT_STATE_DIR = "/var/lib/edison-agent"
DEVICE_KEYS = ("id",)
MQTT_KEYS = ("host", "port", "client_id", "keepalive", "qos", "topic", "status_topic", "reconnect", "tls",
             "clean_session", "inflight", "health_topic", "protocol", "session_expiry", "message_expiry", "username",
             "target", "hosts", "failback", "password_file")
PROTOCOLS = ("3.1.1", "5")
TARGETS = ("generic", "aws-iot", "azure-iot-hub")
USERNAME_FIELDS = ("device_id", "host")
# MQTT 5 expiry intervals are four-byte integers; 0xFFFFFFFF means "never".
MAX_EXPIRY = 0xFFFFFFFF
# The only defaults a target changes: what the service itself prescribes (see agent/config/targets.py).
AZURE_TOPIC = "devices/{device_id}/messages/events/"
AZURE_USERNAME = "{host}/{device_id}/?api-version=2021-04-12"
RECONNECT_KEYS = ("min_delay", "max_delay", "spread")
TLS_KEYS = ("ca_file", "cert_file", "key_file", "key_password_file", "min_version", "verify_hostname",
            "session_resumption", "alpn", "server_name")


class ConfigError(Exception):
    """Raised with every problem found; each problem is one line `file: key.path: message`."""

    def __init__(self, problems: List[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
    ca_file: Path
    cert_file: Optional[Path]
    key_file: Optional[Path]
    # repr=False: a passphrase must never reach a log line or a traceback.
    key_password: Optional[str] = dataclasses.field(default=None, repr=False)
    key_password_source: Optional[str] = None
    min_version: str = "1.2"
    verify_hostname: bool = True
    # Offer the last TLS session on reconnect: a resumed handshake skips the certificates.
    session_resumption: bool = True
    # Protocols offered in the ClientHello's ALPN extension (AWS IoT Core on port 443: x-amzn-mqtt-ca).
    alpn: Tuple[str, ...] = ()
    # SNI and the name checked in the broker's certificate, when it is not mqtt.host.
    server_name: Optional[str] = None


@dataclass(frozen=True)
class MQTTConfig:
    host: str
    port: int = dataclasses.field(metadata=bounded(1, 65535))
    client_id: str
    keepalive: int = dataclasses.field(metadata=bounded(5, 65535))
    qos: int = dataclasses.field(metadata=bounded(0, 1))
    topic: str
    status_topic: str
    reconnect: ReconnectConfig
    tls: Optional[TLSConfig]
    # False asks the broker to keep the session (and queued QoS 1 messages) across reconnects;
    # correctness never depends on it: the spool is the source of truth.
    clean_session: bool = True
    # Messages published but not yet acknowledged, at most: bounds a backlog's burst.
    inflight: int = setting(20, minimum=1, maximum=65535)
    # Retained health document (agent/service/health_report.py); "" only where a test builds this by hand.
    health_topic: str = ""
    protocol: str = "3.1.1"
    # MQTT 5: seconds the broker keeps the session after the connection ends (0: it ends with it).
    session_expiry: int = setting(0, minimum=0, maximum=MAX_EXPIRY)
    # MQTT 5: seconds a telemetry message may wait at the broker for a subscriber; None: forever.
    message_expiry: Optional[int] = setting(None, minimum=1, maximum=MAX_EXPIRY)
    # Sent without a password (the client certificate authenticates); Azure IoT Hub requires one.
    username: Optional[str] = None
    target: str = "generic"
    # Issue 19 (agent/config/broker.py). repr=False: a password must never reach a log line.
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    password_source: Optional[str] = None
    # Every broker, the preferred first; (host, port) is hosts[0]. () only where a test builds this by hand.
    hosts: Tuple[Tuple[str, int], ...] = ()
    # Seconds between looks at the preferred broker while on another; 0: never move back.
    failback: float = setting(300.0, minimum=0, maximum=86400)


@dataclass(frozen=True)
class SpoolConfig:
    path: Path
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
    file: Path = Path(DEFAULT_RUNTIME_DIR) / "health.json"


@dataclass(frozen=True)
class CommandsConfig:
    enabled: bool = False
    # Resolved topics (the {device_id} filled in): the agent subscribes to `<topic>/+`
    # and answers on `<reply_topic>/<id>`.
    topic: str = "edison/{device_id}/cmd"
    reply_topic: str = "edison/{device_id}/reply"
    # A token bucket: `rate` commands per second sustained, `burst` at once.
    rate: float = setting(5.0, minimum=0.01, maximum=1000)
    burst: int = setting(20, minimum=1, maximum=10000)
    # The bounds of set-interval, in seconds.
    min_interval: float = setting(1.0, minimum=0.01, maximum=86400)
    max_interval: float = setting(86400.0, minimum=0.01, maximum=86400)
    # Topic filters an MQTT 5 request's ResponseTopic may match besides `<reply_topic>/...`; the
    # agent's own topics are refused whatever these allow (see agent/service/commands.py).
    response_topics: Tuple[str, ...] = ()
    # The agent's telemetry, status and health topics (filled in at load): never a response topic.
    agent_topics: Tuple[str, ...] = dataclasses.field(default=(), compare=False)


@dataclass(frozen=True)
class HomeAssistantConfig:
    # MQTT discovery: each sensor channel announced as an entity (agent/service/discovery.py).
    discovery: bool = False
    # Home Assistant's discovery prefix (its MQTT integration's setting).
    prefix: str = "homeassistant"


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    device_id: str
    mqtt: MQTTConfig
    board: str
    sensors: Tuple[SensorConfig, ...]
    log_level: str = "info"
    shutdown_timeout: float = setting(5.0, minimum=0.0, maximum=300)
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    spool: Optional[SpoolConfig] = None
    batch: BatchConfig = BatchConfig()
    health: HealthConfig = HealthConfig()
    commands: CommandsConfig = CommandsConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()


# Where each config dataclass sits in config.yaml ("sensors[]": each sensor). A numeric key's bounds are
# declared once on its field (config_reader.setting); the reader, the tests and the reference read them there.
SECTIONS: Tuple[Tuple[str, type], ...] = (
    ("", AgentConfig), ("mqtt", MQTTConfig), ("mqtt.reconnect", ReconnectConfig), ("spool", SpoolConfig),
    ("batch", BatchConfig), ("health", HealthConfig), ("commands", CommandsConfig),
    ("homeassistant", HomeAssistantConfig), ("sensors[]", SensorConfig))


def default_health_file(environ: Mapping[str, str] = os.environ) -> Path:
    """systemd's RuntimeDirectory= (given as $RUNTIME_DIRECTORY since systemd 240), else /run/edison-agent."""
    runtime = (environ.get("RUNTIME_DIRECTORY") or "").split(":")[0]
    return Path(runtime or DEFAULT_RUNTIME_DIR) / "health.json"


def load(path: Path) -> AgentConfig:
    """Load and validate; raise ConfigError listing every problem."""
    label = str(path)
    try:
        text = read_text(Path(path))
    except FileProblem as exc:
        raise ConfigError(["%s: %s" % (label, exc)]) from None
    try:
        tree = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(label, exc)]) from None
    if not isinstance(tree, dict):
        raise ConfigError(["%s: expected a YAML mapping at the top level (device:, mqtt:, sensors:), got %s"
                           % (label, kind_of(tree) if tree is not None else "an empty file")])
    reader = Reader(label, Path(path).resolve().parent)
    config = _build(reader, tree, Path(path))
    if reader.problems:
        raise ConfigError(reader.problems)
    assert config is not None
    return config


def _yaml_problem(label: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = " line %d, column %d:" % (mark.line + 1, mark.column + 1) if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return "%s:%s invalid YAML: %s" % (label, where, problem)


def _build(r: Reader, tree: Dict[str, Any], path: Path) -> Optional[AgentConfig]:
    top = r.section(tree, "", TOP_KEYS)
    device = r.section(top.get("device"), "device", DEVICE_KEYS)
    device_id = config_checks.device_id(r, device)
    mqtt = _mqtt(r, top.get("mqtt"), device_id or "")
    board = r.value(top, "board", "", str, default="auto", choices=BOARDS)
    log_level = r.value(top, "log_level", "", str, default="info", choices=LOG_LEVELS)
    shutdown_timeout = r.setting(top, AgentConfig, "shutdown_timeout", "")
    sensor_list = parse_sensors(r, top.get("sensors"))
    state_dir = _state_dir(r, top)
    spool = _spool(r, top.get("spool"), state_dir)
    batch = _batch(r, top.get("batch"))
    health = _health(r, top.get("health"))
    commands = _commands(r, top.get("commands"), device_id or "")
    if mqtt is not None and commands is not None:
        config_checks.check_topics(r, mqtt, commands)
        commands = dataclasses.replace(commands, agent_topics=(mqtt.topic, mqtt.status_topic, mqtt.health_topic))
    homeassistant = _homeassistant(r, top.get("homeassistant"))
    if (r.problems or device_id is None or mqtt is None or spool is None or batch is None or health is None
            or commands is None or homeassistant is None):
        return None
    return AgentConfig(path=path, device_id=device_id, mqtt=mqtt, board=board, sensors=sensor_list,
                       log_level=log_level, shutdown_timeout=shutdown_timeout, state_dir=state_dir,
                       spool=spool, batch=batch, health=health, commands=commands, homeassistant=homeassistant)


def _state_dir(r: Reader, top: Mapping[str, Any]) -> Path:
    raw = r.value(top, "state_dir", "", str, default=DEFAULT_STATE_DIR)
    state_dir = r.base_dir / os.path.expanduser(raw or DEFAULT_STATE_DIR)
    # It is created at start if missing: what matters is that this user can write there.
    existing = state_dir
    while config_checks.path_kind(existing) == "missing" and existing != existing.parent:
        existing = existing.parent
    kind = config_checks.path_kind(existing)
    if kind == "unreachable":
        r.problem("state_dir", "%s cannot be reached by this user: run as the service user, or set state_dir "
                  "to a directory it can write (the spool lives there)" % existing)
    elif kind != "directory":
        r.problem("state_dir", "%s is not a directory" % existing)
    elif not os.access(existing, os.W_OK | os.X_OK):
        r.problem("state_dir", "%s is not writable by this user: run as the service user, or set state_dir "
                  "to a directory it can write (the spool lives there)" % existing)
    return state_dir


def _spool(r: Reader, raw: Any, state_dir: Path) -> Optional[SpoolConfig]:
    s = r.section(raw, "spool", SPOOL_KEYS)
    path = r.value(s, "path", "spool", str, default=None)
    max_bytes = r.setting(s, SpoolConfig, "max_bytes", "spool")
    max_age = r.setting(s, SpoolConfig, "max_age", "spool")
    commit_interval = r.setting(s, SpoolConfig, "commit_interval", "spool")
    if max_bytes is None or max_age is None or commit_interval is None:
        return None
    spool_path = r.base_dir / os.path.expanduser(path) if path else state_dir / "spool.db"
    kind = config_checks.path_kind(spool_path)
    if kind == "directory":
        r.problem("spool.path", "%s is a directory: name the spool file, e.g. %s" % (spool_path,
                                                                                      spool_path / "spool.db"))
    elif kind == "under-a-file":
        r.problem("spool.path", "%s: a directory above it is a file" % spool_path)
    elif kind == "other":
        r.problem("spool.path", "%s is not a regular file (a device, a pipe or a socket): name the spool file"
                  % spool_path)
    return SpoolConfig(path=spool_path, max_bytes=max_bytes, max_age=max_age, commit_interval=commit_interval)


def _batch(r: Reader, raw: Any) -> Optional[BatchConfig]:
    b = r.section(raw, "batch", BATCH_KEYS)
    max_readings = r.setting(b, BatchConfig, "max_readings", "batch")
    max_delay = r.setting(b, BatchConfig, "max_delay", "batch")
    if max_readings is None or max_delay is None:
        return None
    return BatchConfig(max_readings=max_readings, max_delay=max_delay)


def _health(r: Reader, raw: Any) -> Optional[HealthConfig]:
    h = r.section(raw, "health", HEALTH_KEYS)
    interval = r.setting(h, HealthConfig, "interval", "health")
    raw_file = r.value(h, "file", "health", str, default=None)
    if interval is None:
        return None
    if not raw_file:
        # Not checked: the default directory is made at start, and only root may make it.
        return HealthConfig(interval=interval, file=default_health_file())
    path = r.base_dir / os.path.expanduser(raw_file)
    if config_checks.path_kind(path) == "directory":
        r.problem("health.file", "%s is a directory: name the file, e.g. %s" % (path, path / "health.json"))
    # A path this user cannot reach is for the daemon's user to write: check-config run by someone
    # else says so (cli.py), and the daemon logs one warning if it cannot write there.
    return HealthConfig(interval=interval, file=path)


def _commands(r: Reader, raw: Any, device_id: str) -> Optional[CommandsConfig]:
    c = r.section(raw, "commands", COMMANDS_KEYS)
    enabled = r.value(c, "enabled", "commands", bool, default=False)
    topic = _topic(r, c, "topic", CommandsConfig.topic, device_id, section="commands")
    reply_topic = _topic(r, c, "reply_topic", CommandsConfig.reply_topic, device_id, section="commands")
    response_topics = config_checks.response_topics(r, c, device_id)
    rate = r.setting(c, CommandsConfig, "rate", "commands")
    burst = r.setting(c, CommandsConfig, "burst", "commands")
    min_interval = r.setting(c, CommandsConfig, "min_interval", "commands")
    max_interval = r.setting(c, CommandsConfig, "max_interval", "commands")
    if min_interval is not None and max_interval is not None and max_interval < min_interval:
        r.problem("commands.max_interval", "%s is below min_interval %s" % (max_interval, min_interval))
    if topic is not None and reply_topic is not None and topic == reply_topic:
        r.problem("commands.reply_topic", "%s is also commands.topic: replies would be read back as commands; "
                  "use e.g. \"edison/{device_id}/reply\"" % brief(reply_topic))
    if (enabled is None or topic is None or reply_topic is None or rate is None or burst is None
            or min_interval is None or max_interval is None or response_topics is None):
        return None
    return CommandsConfig(enabled=bool(enabled), topic=topic, reply_topic=reply_topic, rate=rate, burst=burst,
                          min_interval=min_interval, max_interval=max_interval, response_topics=response_topics)


def _homeassistant(r: Reader, raw: Any) -> Optional[HomeAssistantConfig]:
    h = r.section(raw, "homeassistant", HOMEASSISTANT_KEYS)
    discovery = r.value(h, "discovery", "homeassistant", bool, default=False)
    prefix = r.value(h, "prefix", "homeassistant", str, default=HomeAssistantConfig.prefix)
    if prefix is not None and (not prefix or any(c in prefix for c in "+# ") or prefix.strip("/") != prefix):
        r.problem("homeassistant.prefix", "%s is not a discovery prefix: one or more topic levels without '+', "
                  "'#', spaces or a leading or trailing '/' (Home Assistant's default: homeassistant)" % brief(prefix))
        return None
    if discovery is None or prefix is None:
        return None
    return HomeAssistantConfig(discovery=bool(discovery), prefix=prefix)


def _mqtt(r: Reader, raw: Any, device_id: str) -> Optional[MQTTConfig]:
    if raw is None:
        r.problem("mqtt", "required section is missing (at least mqtt.host)")
        return None
    m = r.section(raw, "mqtt", MQTT_KEYS)
    port = r.setting(m, MQTTConfig, "port", "mqtt", default=8883)
    hosts = config_broker.hosts(r, m, port or 8883)
    host, port = hosts[0] if hosts else (None, port)
    failback = config_broker.failback(r, m)
    target = r.value(m, "target", "mqtt", str, default="generic", choices=TARGETS)
    client_id = config_checks.client_id(r, m, device_id)
    keepalive = r.setting(m, MQTTConfig, "keepalive", "mqtt", default=60)
    qos = r.value(m, "qos", "mqtt", int, default=1, choices=(0, 1))
    azure = target == "azure-iot-hub"
    topic = _topic(r, m, "topic", AZURE_TOPIC if azure else "edison/{device_id}/telemetry", device_id)
    # IoT Hub takes nothing but its events topic; a property bag tells status and health apart there.
    status_topic = _topic(r, m, "status_topic", AZURE_TOPIC + "kind=status" if azure else "edison/{device_id}/status",
                          device_id)
    health_topic = _topic(r, m, "health_topic", AZURE_TOPIC + "kind=health" if azure else "edison/{device_id}/health",
                          device_id)
    username = _username(r, m, AZURE_USERNAME if azure else None, device_id, host or "")
    password, password_source = config_broker.password(r, m, username)
    rc = r.section(m.get("reconnect"), "mqtt.reconnect", RECONNECT_KEYS)
    min_delay = r.setting(rc, ReconnectConfig, "min_delay", "mqtt.reconnect")
    max_delay = r.setting(rc, ReconnectConfig, "max_delay", "mqtt.reconnect")
    if min_delay is not None and max_delay is not None and max_delay < min_delay:
        r.problem("mqtt.reconnect.max_delay", "%s is below min_delay %s" % (max_delay, min_delay))
    spread = r.setting(rc, ReconnectConfig, "spread", "mqtt.reconnect")
    tls = _tls(r, m["tls"]) if m.get("tls") is not None else None
    inflight = r.setting(m, MQTTConfig, "inflight", "mqtt")
    protocol = _protocol(r, m)
    clean_session = r.value(m, "clean_session", "mqtt", bool, default=True)
    session_expiry = r.setting(m, MQTTConfig, "session_expiry", "mqtt")
    message_expiry = r.setting(m, MQTTConfig, "message_expiry", "mqtt")
    _version_specific_keys(r, m, protocol)
    if (host is None or port is None or client_id is None or keepalive is None or qos is None
            or topic is None or status_topic is None or min_delay is None or max_delay is None or spread is None
            or health_topic is None):
        return None
    return MQTTConfig(host=host, port=port, client_id=client_id, keepalive=keepalive, qos=qos, topic=topic,
                      status_topic=status_topic, reconnect=ReconnectConfig(min_delay, max_delay, spread), tls=tls,
                      clean_session=bool(clean_session), inflight=inflight or 20, protocol=protocol or "3.1.1",
                      session_expiry=session_expiry or 0, message_expiry=message_expiry, username=username,
                      target=target or "generic", health_topic=health_topic, password=password,
                      password_source=password_source, hosts=hosts or (), failback=failback or 0.0)


def _protocol(r: Reader, m: Mapping[str, Any]) -> Optional[str]:
    raw = m.get("protocol")
    if raw is None:
        return "3.1.1"
    # `protocol: 5` is an integer to YAML, `protocol: 3.1.1` a string: both are meant.
    text = str(raw) if isinstance(raw, (str, int)) and not isinstance(raw, bool) else None
    # 4 is MQTT 3.1.1's protocol level: what brokers' logs and paho (MQTTv311) call it.
    text = "3.1.1" if text == "4" else text
    if text not in PROTOCOLS:
        r.problem("mqtt.protocol", "%s is not an MQTT version this agent speaks: use \"3.1.1\" (or 4: the "
                  "default, for any broker) or 5" % brief(raw))
        return None
    return text


def _version_specific_keys(r: Reader, m: Mapping[str, Any], protocol: Optional[str]) -> None:
    """clean_session belongs to MQTT 3.1.1, the expiry intervals to MQTT 5: a key of the other version
    would be silently ignored, and the session would not behave as the config reads."""
    if protocol == "5" and "clean_session" in m:
        r.problem("mqtt.clean_session", "MQTT 5 has no clean_session: use mqtt.session_expiry (seconds the "
                  "broker keeps the session after a disconnect; 0, the default, ends it with the connection)")
    if protocol == "3.1.1":
        for key in ("session_expiry", "message_expiry"):
            if key in m:
                r.problem("mqtt." + key, "needs mqtt.protocol: 5 (MQTT 3.1.1 has no expiry intervals; "
                          "there, mqtt.clean_session: false keeps the session)")


def _username(r: Reader, m: Mapping[str, Any], default: Optional[str], device_id: str,
              host: str) -> Optional[str]:
    template = r.value(m, "username", "mqtt", str, default=default)
    if template is None:
        return None
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        r.problem("mqtt.username", "bad template %s: %s" % (brief(template), exc))
        return None
    unknown = [f for f in fields if f not in USERNAME_FIELDS]
    if unknown:
        r.problem("mqtt.username", "unknown placeholder {%s} (known: {device_id}, {host})" % unknown[0])
        return None
    username = str(template).format(device_id=device_id, host=host)
    if not username:
        r.problem("mqtt.username", "is empty: remove the key to send no user name")
        return None
    problem = identifiers.topic_problem(username, wildcards=True)
    if problem is not None:
        r.problem("mqtt.username", "%s %s" % (brief(username), problem))
        return None
    return username


def _topic(r: Reader, m: Mapping[str, Any], key: str, default: str, device_id: str,
           section: str = "mqtt") -> Optional[str]:
    template = r.value(m, key, section, str, default=default)
    if template is None:
        return None
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        r.problem(section + "." + key, "bad template %s: %s" % (brief(template), exc))
        return None
    unknown = [f for f in fields if f not in TOPIC_FIELDS]
    if unknown:
        r.problem(section + "." + key, "unknown placeholder {%s} (known: {device_id})" % unknown[0])
        return None
    topic = str(template).format(device_id=device_id)
    problem = identifiers.topic_problem(topic)
    if problem is not None:
        r.problem(section + "." + key, "%s is not a valid topic to publish to: it %s" % (brief(topic), problem))
        return None
    return topic


def _tls(r: Reader, raw: Any) -> Optional[TLSConfig]:
    t = r.section(raw, "mqtt.tls", TLS_KEYS)
    ca_file = r.file(t, "ca_file", "mqtt.tls", required=True)
    cert_file = r.file(t, "cert_file", "mqtt.tls", required=False)
    key_file = r.file(t, "key_file", "mqtt.tls", required=False)
    if "cert_file" in t and "key_file" not in t:
        r.problem("mqtt.tls.key_file", "cert_file is set but key_file is not: the broker needs both")
    if "key_file" in t and "cert_file" not in t:
        r.problem("mqtt.tls.cert_file", "key_file is set but cert_file is not: the broker needs both")
    min_version = r.value(t, "min_version", "mqtt.tls", str, default="1.2")
    if min_version is not None and min_version not in TLS_VERSIONS:
        r.problem("mqtt.tls.min_version", "%s is refused: TLS below 1.2 is broken and OpenSSL 3 will not "
                  "speak it; use \"1.2\" or \"1.3\" (and tls_version tlsv1.2 on the broker)" % brief(min_version))
    verify_hostname = r.value(t, "verify_hostname", "mqtt.tls", bool, default=True)
    session_resumption = r.value(t, "session_resumption", "mqtt.tls", bool, default=True)
    alpn = _alpn(r, t)
    server_name = r.value(t, "server_name", "mqtt.tls", str, default=None)
    if server_name is not None and (not server_name or len(server_name) > 253
                                   or any(c.isspace() or ord(c) < 32 for c in server_name)):
        r.problem("mqtt.tls.server_name", "%s is not a host name: give the name in the broker's certificate"
                  % brief(server_name))
    password, source = _key_password(r, t)
    if key_file is not None and key_file.is_file() and os.access(key_file, os.R_OK):
        _check_key_file(r, key_file, password)
    if ca_file is None:
        return None
    return TLSConfig(ca_file=ca_file, cert_file=cert_file, key_file=key_file, key_password=password,
                     key_password_source=source, min_version=min_version or "1.2",
                     verify_hostname=bool(verify_hostname), session_resumption=bool(session_resumption),
                     alpn=alpn, server_name=server_name or None)


def _alpn(r: Reader, t: Mapping[str, Any]) -> Tuple[str, ...]:
    raw = t.get("alpn")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw or not all(isinstance(p, str) and p for p in raw):
        r.problem("mqtt.tls.alpn", "expected a list of protocol names like [x-amzn-mqtt-ca], got %s %s"
                  % (kind_of(raw), brief(raw)))
        return ()
    # RFC 7301: each name is 1-255 bytes.
    for name in raw:
        if len(name.encode("utf-8")) > 255:
            r.problem("mqtt.tls.alpn", "%s is longer than the 255 bytes ALPN allows" % brief(name))
            return ()
    return tuple(raw)


def _key_password(r: Reader, t: Mapping[str, Any]) -> Tuple[Optional[str], Optional[str]]:
    pass_file = r.file(t, "key_password_file", "mqtt.tls", required=False)
    if pass_file is not None and pass_file.is_file() and os.access(pass_file, os.R_OK):
        # The first line is all that is used: a passphrase file is not read past 4 KiB.
        with open(pass_file, "rb") as f:
            lines = f.read(4096).decode("utf-8", errors="replace").splitlines()
        if not lines or not lines[0]:
            r.problem("mqtt.tls.key_password_file", "%s is empty: put the key's passphrase on its first line"
                      % pass_file)
            return None, None
        return lines[0], "file %s" % pass_file
    env = os.environ.get(KEY_PASSWORD_ENV)
    if env:
        return env, "environment variable %s" % KEY_PASSWORD_ENV
    return None, None


def _check_key_file(r: Reader, key_file: Path, password: Optional[str]) -> None:
    mode = key_file.stat().st_mode
    if mode & 0o004:
        r.problem("mqtt.tls.key_file", "%s is readable by every user (mode %04o): run 'chmod 600 %s'"
                  % (key_file, mode & 0o777, key_file))
    with open(key_file, "rb") as f:
        head = f.read(4096)
    if b"PRIVATE KEY" not in head:
        r.problem("mqtt.tls.key_file", "%s holds no PEM private key (no 'BEGIN ... PRIVATE KEY' line)" % key_file)
    elif (b"ENCRYPTED" in head) and password is None:
        r.problem("mqtt.tls.key_file", "%s is encrypted but no passphrase is configured: set "
                  "mqtt.tls.key_password_file or the environment variable %s" % (key_file, KEY_PASSWORD_ENV))




def load_mqtt(path: Path) -> MQTTConfig:
    """Only a config file's `mqtt` section (and device.id, for its topics): how an operator tool
    (`edison-agent watch -c FILE`) reaches the broker. The rest of the file is not checked, so a
    file holding nothing but `mqtt:` will do. The file is read with load()'s limits. Raises ConfigError."""
    label = str(path)
    try:
        tree = parse_yaml(read_text(Path(path)))
    except FileProblem as exc:
        raise ConfigError(["%s: %s" % (label, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(label, exc)]) from None
    if not isinstance(tree, dict):
        raise ConfigError(["%s: expected a YAML mapping with an mqtt: section" % label])
    reader = Reader(label, Path(path).resolve().parent)
    device = reader.section(tree.get("device"), "device", DEVICE_KEYS)
    device_id = config_checks.device_id(reader, device)
    mqtt = _mqtt(reader, tree.get("mqtt"), device_id or "")
    if reader.problems or mqtt is None:
        raise ConfigError(reader.problems or ["%s: mqtt: cannot be read" % label])
    return mqtt
