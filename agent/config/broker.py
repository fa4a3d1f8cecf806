"""mqtt.hosts, mqtt.failback and mqtt.password_file: which brokers the agent may use, and the
password some brokers want beside a client certificate (issue 19). Read by agent/config/mqtt_section.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from agent.config import checks as config_checks
from agent.config.identifiers import brief
from agent.config.reader import Reader, kind_of
from agent.config.sections import MQTTConfig

MQTT_PASSWORD_ENV = "EDISON_AGENT_MQTT_PASSWORD"  # noqa: S105 - a variable name, not a secret

Address = Tuple[str, int]


def hosts(r: Reader, m: Mapping[str, Any], port: int) -> Optional[Tuple[Address, ...]]:
    """The brokers in order of preference, or None when the config names none (or badly)."""
    raw = m.get("hosts")
    if raw is None:
        host = config_checks.host(r, m)
        return ((host, port),) if host else None
    if "host" in m:
        r.problem("mqtt.hosts", "set mqtt.host (one broker) or mqtt.hosts (a list, the first preferred), not both")
        return None
    if not isinstance(raw, list) or not raw:
        r.problem("mqtt.hosts", "expected a list like [gw1.example, \"gw2.example:8884\"], got %s %s"
                  % (kind_of(raw), brief(raw)))
        return None
    out = []
    for i, item in enumerate(raw):
        address = _address(r, "mqtt.hosts[%d]" % i, item, port)
        if address is None:
            return None
        if address in out:
            r.problem("mqtt.hosts[%d]" % i, "%s:%d is listed twice" % address)
            return None
        out.append(address)
    return tuple(out)


def _address(r: Reader, where: str, item: Any, port: int) -> Optional[Address]:
    if not isinstance(item, str) or not item.strip() or any(c.isspace() for c in item):
        r.problem(where, "expected \"host\" or \"host:port\", got %s %s" % (kind_of(item), brief(item)))
        return None
    host, text_port = item, None
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        text_port = rest[1:] if rest.startswith(":") else None
    elif item.count(":") == 1:
        host, text_port = item.split(":")
    if text_port is not None:
        if not text_port.isdigit() or not 1 <= int(text_port) <= 65535:
            r.problem(where, "%s: the port must be a number from 1 to 65535" % brief(item))
            return None
        port = int(text_port)
    if not host:
        r.problem(where, "%s has no host name" % brief(item))
        return None
    # The same rule as mqtt.host: a host name or address, never a URL or something with control characters.
    if "/" in host or any(ord(c) < 32 for c in host) or len(host) > 253:
        r.problem(where, "%s is not \"host\" or \"host:port\" (a URL, control characters, or longer than the 253 "
                  "characters DNS allows)" % brief(item))
        return None
    return host, port


def failback(r: Reader, m: Mapping[str, Any]) -> float:
    """0 turns failback off: the agent stays on whichever broker works until it is lost."""
    value = r.setting(m, MQTTConfig, "failback", "mqtt")
    if 0 < value < 10:
        r.problem("mqtt.failback", "%s s would test the preferred broker with a TLS handshake every few seconds: "
                  "use 0 (off) or at least 10" % value)
    return float(value)


def password(r: Reader, path: Optional[Path], username: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """(the password, where it came from): mqtt.password_file's first line (`path`, as r.file read it),
    else $EDISON_AGENT_MQTT_PASSWORD."""
    if path is not None:
        if username is None:
            r.problem("mqtt.password_file", "a password needs mqtt.username (MQTT sends no password without a "
                      "user name)")
            return None, None
        if not (path.is_file() and os.access(path, os.R_OK)):
            return None, None  # r.file has said why
        mode = path.stat().st_mode
        if mode & 0o004:
            r.problem("mqtt.password_file", "%s is readable by every user (mode %04o): run 'chmod 600 %s'"
                      % (path, mode & 0o777, path))
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        if not lines or not lines[0]:
            r.problem("mqtt.password_file", "%s is empty: put the password on its first line" % path)
            return None, None
        return lines[0], "file %s" % path
    env = os.environ.get(MQTT_PASSWORD_ENV)
    # Only with a user name: the variable may be set for the whole system, and MQTT has no
    # password without one.
    if env and username is not None:
        return env, "environment variable %s" % MQTT_PASSWORD_ENV
    return None, None
