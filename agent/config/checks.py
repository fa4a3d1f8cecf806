"""The checks of config.yaml that go beyond a value's type and bounds: names, hosts, topics that would
meet, paths of the wrong kind, and the warnings check-config prints (and the daemon logs at start).

Split from the loader (schema.py, mqtt_section.py); the rules for names are agent/config/identifiers.py's.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from agent.config import identifiers
from agent.config.identifiers import brief
from agent.config.reader import Reader
from agent.config.sections import AgentConfig, CommandsConfig, MQTTConfig


def warnings_for(cfg: AgentConfig) -> List[str]:
    """What is allowed but probably not meant, one line each (check-config prints them, `run` logs them)."""
    warnings = []
    if not cfg.sensors:
        # Allowed: the agent still connects, publishes status and health and answers commands, which is
        # how a board is brought up before its sensors are wired. Telegraf refuses a config without
        # inputs; a silent agent here would look like a broken one.
        warnings.append("sensors: none configured: the agent connects and reports its health, but publishes no "
                        "readings; add sensors (docs/sensors.md)")
    directory = cfg.health.file.parent
    kind = path_kind(directory)
    if kind == "unreachable" or (kind == "directory" and not os.access(directory, os.W_OK | os.X_OK)):
        warnings.append("health.file: %s cannot be written by this user (the service's user may): if it cannot "
                        "either, the daemon logs one warning and `edison-agent status` has nothing to read"
                        % cfg.health.file)
    return warnings


def device_id(r: Reader, device: Mapping[str, Any]) -> Optional[str]:
    if device.get("id") is None:
        # The short host name: `edison.local` would put a '.' in every topic and the client id.
        hostname = socket.gethostname().split(".")[0]
        if identifiers.device_id_problem(hostname) is None:
            return hostname
        r.problem("device.id", "is not set and the host name %s is not a valid device id: set device.id, e.g. %s"
                  % (brief(hostname), brief(identifiers.suggest_device_id(hostname))))
        return None
    device_id: Optional[str] = r.value(device, "id", "device", str)
    problem = identifiers.device_id_problem(device_id) if device_id is not None else None
    if problem is not None:
        r.problem("device.id", "%s %s" % (brief(device_id), problem))
        return None
    return device_id


def path_kind(path: Path) -> str:
    """directory, file, other (a device, a pipe, a socket), missing, under-a-file (a parent is not a
    directory), or unreachable (a parent this user may not search)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:
        return "under-a-file"
    except OSError:
        return "unreachable"
    return "directory" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def host(r: Reader, m: Mapping[str, Any]) -> Optional[str]:
    host: Optional[str] = r.value(m, "host", "mqtt", str)
    if host is None:
        return None
    stripped = host.strip()
    if not stripped:
        r.problem("mqtt.host", "is empty: give the broker's host name or address")
        return None
    if "://" in host or "/" in host:
        r.problem("mqtt.host", "%s is a URL: give the host only (e.g. %s), and the port in mqtt.port"
                  % (brief(host), brief(_url_host(host))))
        return None
    if host.count(":") == 1 and not host.startswith("["):
        r.problem("mqtt.host", "%s: give the host only (%s), and the port in mqtt.port"
                  % (brief(host), brief(host.split(":")[0])))
        return None
    if host != stripped or any(c.isspace() or ord(c) < 32 for c in host) or len(host) > 253:
        r.problem("mqtt.host", "%s is not a host name or address (spaces, control characters, or longer than "
                  "the 253 characters DNS allows)" % brief(host))
        return None
    return host


def _url_host(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].rsplit("@", 1)[-1].split(":")[0] or "broker.example"


def client_id(r: Reader, m: Mapping[str, Any], device_id: str) -> Optional[str]:
    client_id: Optional[str] = r.value(m, "client_id", "mqtt", str, default=device_id)
    if client_id is None or "client_id" not in m:
        return client_id
    # The client id goes in every CONNECT: a broker refuses U+0000 and strings past 65535 bytes, and
    # a control character splits the log line that names it.
    problem = identifiers.topic_problem(client_id, wildcards=True) if client_id else None
    if problem is not None:
        r.problem("mqtt.client_id", "%s %s" % (brief(client_id), problem))
        return None
    return client_id


def check_topics(r: Reader, mqtt: MQTTConfig, commands: CommandsConfig) -> None:
    """Topics that would meet: the agent reading its own messages, or two documents on one topic."""
    own = (("mqtt.topic", mqtt.topic), ("mqtt.status_topic", mqtt.status_topic),
           ("mqtt.health_topic", mqtt.health_topic))
    names = {"mqtt.topic": ("telemetry topic", "readings"), "mqtt.status_topic": ("status topic", "status"),
             "mqtt.health_topic": ("health topic", "health document")}
    for index, (key, topic) in enumerate(own):
        for other_key, other in own[:index]:
            if topic == other:
                r.problem(key, "%s is also the %s: give the %s a topic of its own"
                          % (brief(topic), names[other_key][0], names[key][1]))
    if not commands.enabled:
        return
    subscription = commands.topic + "/+"
    for key, topic in own + (("commands.reply_topic", commands.reply_topic + "/x"),):
        if identifiers.matches(subscription, topic):
            r.problem("commands.topic", "the agent subscribes to %s, which covers %s (%s): it would read its own "
                      "messages as commands; give commands a topic of their own" % (brief(subscription),
                                                                                   key, brief(topic)))
            return
    # A reply goes to <reply_topic>/<id>, and the sender picks the id.
    for key, topic in own:
        if identifiers.matches(commands.reply_topic + "/+", topic):
            r.problem("commands.reply_topic", "a command with id %s would be answered on %s (%s): give replies a "
                      "topic of their own" % (brief(topic.rsplit("/", 1)[1]), key, brief(topic)))


def response_topics(r: Reader, c: Mapping[str, Any], device_id: str) -> Optional[Tuple[str, ...]]:
    raw = c.get("response_topics")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        r.problem("commands.response_topics", "expected a list of topic filters like [\"ops/+/answers\"], got %s"
                  % brief(raw))
        return None
    result = []
    for item in raw:
        try:
            topic_filter = item.replace("{device_id}", device_id)
        except ValueError:
            topic_filter = item
        problem = identifiers.topic_problem(topic_filter, wildcards=True)
        if problem is not None:
            r.problem("commands.response_topics", "%s %s" % (brief(item), problem))
            return None
        result.append(topic_filter)
    return tuple(result)
