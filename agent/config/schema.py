"""config.yaml -> frozen dataclasses (agent/config/sections.py), with every problem reported at once by its key path.

The loader: the top level, state_dir, spool, batch, health, commands and homeassistant here; the mqtt
section in mqtt_section.py; sensors in sensor_config.py. The dataclasses are imported from here by
the stages, as they always were.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import yaml

from agent.config import checks as config_checks
from agent.config import mqtt_section
from agent.config.fields import default_of, keys_of
from agent.config.identifiers import brief
from agent.config.problems import ConfigError as ConfigError
from agent.config.problems import FileProblem
from agent.config.reader import Reader, kind_of, parse_yaml, read_text
from agent.config.sections import AZURE_TOPIC as AZURE_TOPIC
from agent.config.sections import AZURE_USERNAME as AZURE_USERNAME
from agent.config.sections import KEY_PASSWORD_ENV as KEY_PASSWORD_ENV
from agent.config.sections import SECTIONS as SECTIONS
from agent.config.sections import AgentConfig as AgentConfig
from agent.config.sections import BatchConfig as BatchConfig
from agent.config.sections import CommandsConfig as CommandsConfig
from agent.config.sections import HealthConfig as HealthConfig
from agent.config.sections import HomeAssistantConfig as HomeAssistantConfig
from agent.config.sections import MQTTConfig as MQTTConfig
from agent.config.sections import ReconnectConfig as ReconnectConfig
from agent.config.sections import SpoolConfig as SpoolConfig
from agent.config.sections import TLSConfig as TLSConfig
from agent.config.sections import default_health_file as default_health_file
from agent.config.sensor_config import SensorConfig as SensorConfig
from agent.config.sensor_config import parse_sensors


def load(path: Path) -> AgentConfig:
    """Load and validate; raise ConfigError listing every problem."""
    tree = _tree(path, "expected a YAML mapping at the top level (device:, mqtt:, sensors:), got %s")
    reader = Reader(str(path), Path(path).resolve().parent)
    config = _build(reader, tree, Path(path))
    if reader.problems:
        raise ConfigError(reader.problems)
    assert config is not None
    return config


def _tree(path: Path, not_a_mapping: str) -> Dict[str, Any]:
    """The file's YAML mapping, read with the limits of reader.read_text; raises ConfigError."""
    label = str(path)
    try:
        tree = parse_yaml(read_text(Path(path)))
    except FileProblem as exc:
        raise ConfigError(["%s: %s" % (label, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(label, exc)]) from None
    if not isinstance(tree, dict):
        raise ConfigError(["%s: %s" % (label, not_a_mapping % (kind_of(tree) if tree is not None
                                                                 else "an empty file"))])
    return tree


def _yaml_problem(label: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = " line %d, column %d:" % (mark.line + 1, mark.column + 1) if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return "%s:%s invalid YAML: %s" % (label, where, problem)


def _build(r: Reader, tree: Dict[str, Any], path: Path) -> Optional[AgentConfig]:
    top = r.section(tree, "", keys_of(AgentConfig))
    device = r.section(top.get("device"), "device", keys_of(AgentConfig, "device"))
    device_id = config_checks.device_id(r, device)
    mqtt = mqtt_section.read(r, top.get("mqtt"), device_id or "")
    board = r.setting(top, AgentConfig, "board", "")
    log_level = r.setting(top, AgentConfig, "log_level", "")
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
    default = str(default_of(AgentConfig, "state_dir"))
    raw = r.value(top, "state_dir", "", str, default=default)
    state_dir = r.base_dir / os.path.expanduser(raw or default)
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
    s = r.section(raw, "spool", keys_of(SpoolConfig))
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
    b = r.section(raw, "batch", keys_of(BatchConfig))
    max_readings = r.setting(b, BatchConfig, "max_readings", "batch")
    max_delay = r.setting(b, BatchConfig, "max_delay", "batch")
    if max_readings is None or max_delay is None:
        return None
    return BatchConfig(max_readings=max_readings, max_delay=max_delay)


def _health(r: Reader, raw: Any) -> Optional[HealthConfig]:
    h = r.section(raw, "health", keys_of(HealthConfig))
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
    c = r.section(raw, "commands", keys_of(CommandsConfig))
    enabled = r.setting(c, CommandsConfig, "enabled", "commands")
    topic = mqtt_section.template_topic(r, c, "topic", default_of(CommandsConfig, "topic"), device_id,
                                        section="commands")
    reply_topic = mqtt_section.template_topic(r, c, "reply_topic", default_of(CommandsConfig, "reply_topic"),
                                              device_id, section="commands")
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
    h = r.section(raw, "homeassistant", keys_of(HomeAssistantConfig))
    discovery = r.setting(h, HomeAssistantConfig, "discovery", "homeassistant")
    prefix = r.setting(h, HomeAssistantConfig, "prefix", "homeassistant")
    if prefix is not None and (not prefix or any(c in prefix for c in "+# ") or prefix.strip("/") != prefix):
        r.problem("homeassistant.prefix", "%s is not a discovery prefix: one or more topic levels without '+', "
                  "'#', spaces or a leading or trailing '/' (Home Assistant's default: homeassistant)" % brief(prefix))
        return None
    if discovery is None or prefix is None:
        return None
    return HomeAssistantConfig(discovery=bool(discovery), prefix=prefix)


def load_mqtt(path: Path) -> MQTTConfig:
    """Only a config file's `mqtt` section (and device.id, for its topics): how an operator tool
    (`edison-agent watch -c FILE`) reaches the broker. The rest of the file is not checked, so a
    file holding nothing but `mqtt:` will do. The file is read with load()'s limits. Raises ConfigError."""
    reader, mqtt = _mqtt_only(path)
    if reader.problems or mqtt is None:
        raise ConfigError(reader.problems or ["%s: mqtt: cannot be read" % path])
    return mqtt


def mqtt_as_far_as_it_reads(path: Path) -> Optional[MQTTConfig]:
    """The `mqtt` section even with problems in it (load() has reported them), or None without a
    broker to reach: `edison-agent doctor` diagnoses the TLS files a config names, one check each.
    Raises ConfigError only when the file is no YAML mapping."""
    return _mqtt_only(path)[1]


def _mqtt_only(path: Path) -> Tuple[Reader, Optional[MQTTConfig]]:
    tree = _tree(path, "expected a YAML mapping with an mqtt: section, got %s")
    reader = Reader(str(path), Path(path).resolve().parent)
    device = reader.section(tree.get("device"), "device", keys_of(AgentConfig, "device"))
    device_id = config_checks.device_id(reader, device)
    return reader, mqtt_section.read(reader, tree.get("mqtt"), device_id or "")
