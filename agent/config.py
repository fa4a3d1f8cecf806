"""config.yaml -> frozen dataclasses, with every problem reported at once by its key path."""

from __future__ import annotations

import dataclasses
import os
import socket
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from agent.config_reader import Reader, UniqueKeyLoader, is_topic_safe, kind_of
from agent.sensor_config import SensorConfig, parse_sensors

KEY_PASSWORD_ENV = "EDISON_AGENT_KEY_PASSWORD"  # noqa: S105 - a variable name, not a secret
BOARDS = ("auto", "mraa", "simulated")
LOG_LEVELS = ("debug", "info", "warning", "error")
TLS_VERSIONS = ("1.2", "1.3")
TOPIC_FIELDS = ("device_id",)
# The known keys of each section: anything else is reported as unknown.
TOP_KEYS = ("device", "mqtt", "board", "sensors", "log_level", "shutdown_timeout", "state_dir", "spool", "batch")
SPOOL_KEYS = ("path", "max_bytes", "max_age", "commit_interval")
BATCH_KEYS = ("max_readings", "max_delay")
DEFAULT_STATE_DIR = "/var/lib/edison-agent"
DEVICE_KEYS = ("id",)
MQTT_KEYS = ("host", "port", "client_id", "keepalive", "qos", "topic", "status_topic", "reconnect", "tls",
             "clean_session", "inflight")
RECONNECT_KEYS = ("min_delay", "max_delay", "spread")
TLS_KEYS = ("ca_file", "cert_file", "key_file", "key_password_file", "min_version", "verify_hostname",
            "session_resumption")


class ConfigError(Exception):
    """Raised with every problem found; each problem is one line `file: key.path: message`."""

    def __init__(self, problems: List[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ReconnectConfig:
    min_delay: float = 1.0
    max_delay: float = 120.0
    # The window the first attempt after a lost connection is drawn from: a broker restart drops
    # the whole fleet in one instant, and 100 boards spread over 15 s keep any one second under 20%.
    spread: float = 15.0


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


@dataclass(frozen=True)
class MQTTConfig:
    host: str
    port: int
    client_id: str
    keepalive: int
    qos: int
    topic: str
    status_topic: str
    reconnect: ReconnectConfig
    tls: Optional[TLSConfig]
    # False asks the broker to keep the session (and queued QoS 1 messages) across reconnects;
    # correctness never depends on it: the spool is the source of truth.
    clean_session: bool = True
    # Messages published but not yet acknowledged, at most: bounds a backlog's burst.
    inflight: int = 20


@dataclass(frozen=True)
class SpoolConfig:
    path: Path
    max_bytes: int = 64 * 1024 * 1024
    max_age: float = 7 * 24 * 3600.0
    # At most one fsync per interval, whatever the sample rate: flash wears with every write.
    commit_interval: float = 1.0


@dataclass(frozen=True)
class BatchConfig:
    max_readings: int = 1
    max_delay: float = 0.0


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    device_id: str
    mqtt: MQTTConfig
    board: str
    sensors: Tuple[SensorConfig, ...]
    log_level: str = "info"
    shutdown_timeout: float = 5.0
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    spool: Optional[SpoolConfig] = None
    batch: BatchConfig = BatchConfig()


def load(path: Path) -> AgentConfig:
    """Load and validate; raise ConfigError listing every problem."""
    label = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(["%s: cannot read the config file: %s" % (label, exc.strerror or exc)]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(["%s: not UTF-8 text (byte %d): save it as UTF-8" % (label, exc.start)]) from None
    try:
        tree = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
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
    device_id = r.value(device, "id", "device", str, default=socket.gethostname())
    if device_id is not None and not is_topic_safe(device_id):
        r.problem("device.id", "%r may not contain '/', '+', '#' or spaces: it is part of MQTT topics" % device_id)
    mqtt = _mqtt(r, top.get("mqtt"), device_id or "")
    board = r.value(top, "board", "", str, default="auto", choices=BOARDS)
    log_level = r.value(top, "log_level", "", str, default="info", choices=LOG_LEVELS)
    shutdown_timeout = r.value(top, "shutdown_timeout", "", float, default=5.0, minimum=0.0, maximum=300.0)
    sensor_list = parse_sensors(r, top.get("sensors"))
    state_dir = _state_dir(r, top)
    spool = _spool(r, top.get("spool"), state_dir)
    batch = _batch(r, top.get("batch"))
    if r.problems or mqtt is None or spool is None or batch is None:
        return None
    return AgentConfig(path=path, device_id=device_id, mqtt=mqtt, board=board, sensors=sensor_list,
                       log_level=log_level, shutdown_timeout=shutdown_timeout, state_dir=state_dir,
                       spool=spool, batch=batch)


def _state_dir(r: Reader, top: Mapping[str, Any]) -> Path:
    raw = r.value(top, "state_dir", "", str, default=DEFAULT_STATE_DIR)
    state_dir = r.base_dir / os.path.expanduser(raw or DEFAULT_STATE_DIR)
    # It is created at start if missing: what matters is that this user can write there.
    existing = state_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        r.problem("state_dir", "%s is not a directory" % existing)
    elif not os.access(existing, os.W_OK | os.X_OK):
        r.problem("state_dir", "%s is not writable by this user: run as the service user, or set state_dir "
                  "to a directory it can write (the spool lives there)" % existing)
    return state_dir


def _spool(r: Reader, raw: Any, state_dir: Path) -> Optional[SpoolConfig]:
    s = r.section(raw, "spool", SPOOL_KEYS)
    path = r.value(s, "path", "spool", str, default=None)
    max_bytes = r.value(s, "max_bytes", "spool", int, default=SpoolConfig.max_bytes, minimum=64 * 1024)
    max_age = r.value(s, "max_age", "spool", float, default=SpoolConfig.max_age, minimum=1.0)
    commit_interval = r.value(s, "commit_interval", "spool", float, default=1.0, minimum=0.0, maximum=3600)
    if max_bytes is None or max_age is None or commit_interval is None:
        return None
    spool_path = r.base_dir / os.path.expanduser(path) if path else state_dir / "spool.db"
    return SpoolConfig(path=spool_path, max_bytes=max_bytes, max_age=max_age, commit_interval=commit_interval)


def _batch(r: Reader, raw: Any) -> Optional[BatchConfig]:
    b = r.section(raw, "batch", BATCH_KEYS)
    max_readings = r.value(b, "max_readings", "batch", int, default=1, minimum=1, maximum=1000)
    max_delay = r.value(b, "max_delay", "batch", float, default=0.0, minimum=0.0, maximum=3600)
    if max_readings is None or max_delay is None:
        return None
    return BatchConfig(max_readings=max_readings, max_delay=max_delay)


def _mqtt(r: Reader, raw: Any, device_id: str) -> Optional[MQTTConfig]:
    if raw is None:
        r.problem("mqtt", "required section is missing (at least mqtt.host)")
        return None
    m = r.section(raw, "mqtt", MQTT_KEYS)
    host = r.value(m, "host", "mqtt", str)
    port = r.value(m, "port", "mqtt", int, default=8883, minimum=1, maximum=65535)
    client_id = r.value(m, "client_id", "mqtt", str, default=device_id)
    keepalive = r.value(m, "keepalive", "mqtt", int, default=60, minimum=5, maximum=65535)
    qos = r.value(m, "qos", "mqtt", int, default=1, choices=(0, 1))
    topic = _topic(r, m, "topic", "edison/{device_id}/telemetry", device_id)
    status_topic = _topic(r, m, "status_topic", "edison/{device_id}/status", device_id)
    rc = r.section(m.get("reconnect"), "mqtt.reconnect", RECONNECT_KEYS)
    min_delay = r.value(rc, "min_delay", "mqtt.reconnect", float, default=1.0, minimum=0.1, maximum=3600)
    max_delay = r.value(rc, "max_delay", "mqtt.reconnect", float, default=120.0, minimum=0.1, maximum=86400)
    if min_delay is not None and max_delay is not None and max_delay < min_delay:
        r.problem("mqtt.reconnect.max_delay", "%s is below min_delay %s" % (max_delay, min_delay))
    spread = r.value(rc, "spread", "mqtt.reconnect", float, default=ReconnectConfig.spread, minimum=0.0,
                     maximum=86400)
    tls = _tls(r, m["tls"]) if m.get("tls") is not None else None
    clean_session = r.value(m, "clean_session", "mqtt", bool, default=True)
    inflight = r.value(m, "inflight", "mqtt", int, default=20, minimum=1, maximum=65535)
    if (host is None or port is None or client_id is None or keepalive is None or qos is None
            or topic is None or status_topic is None or min_delay is None or max_delay is None or spread is None):
        return None
    return MQTTConfig(host=host, port=port, client_id=client_id, keepalive=keepalive, qos=qos, topic=topic,
                      status_topic=status_topic, reconnect=ReconnectConfig(min_delay, max_delay, spread), tls=tls,
                      clean_session=bool(clean_session), inflight=inflight or 20)


def _topic(r: Reader, m: Mapping[str, Any], key: str, default: str, device_id: str) -> Optional[str]:
    template = r.value(m, key, "mqtt", str, default=default)
    if template is None:
        return None
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        r.problem("mqtt." + key, "bad template %r: %s" % (template, exc))
        return None
    unknown = [f for f in fields if f not in TOPIC_FIELDS]
    if unknown:
        r.problem("mqtt." + key, "unknown placeholder {%s} (known: {device_id})" % unknown[0])
        return None
    topic = str(template).format(device_id=device_id)
    if "+" in topic or "#" in topic or not topic:
        r.problem("mqtt." + key, "%r is not a valid topic to publish to (no '+', '#' or empty topic)" % topic)
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
        r.problem("mqtt.tls.min_version", "%r is refused: TLS below 1.2 is broken and OpenSSL 3 will not "
                  "speak it; use \"1.2\" or \"1.3\" (and tls_version tlsv1.2 on the broker)" % min_version)
    verify_hostname = r.value(t, "verify_hostname", "mqtt.tls", bool, default=True)
    session_resumption = r.value(t, "session_resumption", "mqtt.tls", bool, default=True)
    password, source = _key_password(r, t)
    if key_file is not None and key_file.is_file() and os.access(key_file, os.R_OK):
        _check_key_file(r, key_file, password)
    if ca_file is None:
        return None
    return TLSConfig(ca_file=ca_file, cert_file=cert_file, key_file=key_file, key_password=password,
                     key_password_source=source, min_version=min_version or "1.2",
                     verify_hostname=bool(verify_hostname), session_resumption=bool(session_resumption))


def _key_password(r: Reader, t: Mapping[str, Any]) -> Tuple[Optional[str], Optional[str]]:
    pass_file = r.file(t, "key_password_file", "mqtt.tls", required=False)
    if pass_file is not None and pass_file.is_file() and os.access(pass_file, os.R_OK):
        lines = pass_file.read_text(encoding="utf-8", errors="replace").splitlines()
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
    head = key_file.read_bytes()[:4096]
    if b"PRIVATE KEY" not in head:
        r.problem("mqtt.tls.key_file", "%s holds no PEM private key (no 'BEGIN ... PRIVATE KEY' line)" % key_file)
    elif (b"ENCRYPTED" in head) and password is None:
        r.problem("mqtt.tls.key_file", "%s is encrypted but no passphrase is configured: set "
                  "mqtt.tls.key_password_file or the environment variable %s" % (key_file, KEY_PASSWORD_ENV))


