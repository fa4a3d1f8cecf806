"""The `mqtt` section of config.yaml (with mqtt.reconnect and mqtt.tls): how the agent reaches its broker.

Each key's default, bounds and choices are its field's in agent/config/sections.py; what is read here
beyond them: a target's defaults (Azure IoT Hub's topics and user name), templates, the MQTT version's
own keys, and the TLS files (mode, PEM, passphrase).
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from agent.config import broker as config_broker
from agent.config import checks as config_checks
from agent.config import identifiers
from agent.config.fields import choices_of, default_of, keys_of
from agent.config.identifiers import brief
from agent.config.reader import Reader, kind_of
from agent.config.sections import (
    AZURE_TOPIC,
    AZURE_USERNAME,
    KEY_PASSWORD_ENV,
    MQTTConfig,
    ReconnectConfig,
    TLSConfig,
)

TOPIC_FIELDS = ("device_id",)
USERNAME_FIELDS = ("device_id", "host")


def read(r: Reader, raw: Any, device_id: str) -> Optional[MQTTConfig]:
    """The section, or None (with the problems in `r`) when it cannot be built."""
    if raw is None:
        r.problem("mqtt", "required section is missing (at least mqtt.host)")
        return None
    m = r.section(raw, "mqtt", keys_of(MQTTConfig))
    port = r.setting(m, MQTTConfig, "port", "mqtt")
    hosts = config_broker.hosts(r, m, port)
    host, port = hosts[0] if hosts else (None, port)
    failback = config_broker.failback(r, m)
    target = r.setting(m, MQTTConfig, "target", "mqtt")
    client_id = config_checks.client_id(r, m, device_id)
    keepalive = r.setting(m, MQTTConfig, "keepalive", "mqtt")
    qos = r.setting(m, MQTTConfig, "qos", "mqtt")
    azure = target == "azure-iot-hub"
    topic = template_topic(r, m, "topic", AZURE_TOPIC if azure else default_of(MQTTConfig, "topic"), device_id)
    # IoT Hub takes nothing but its events topic; a property bag tells status and health apart there.
    status_topic = template_topic(r, m, "status_topic", AZURE_TOPIC + "kind=status" if azure
                                  else default_of(MQTTConfig, "status_topic"), device_id)
    health_topic = template_topic(r, m, "health_topic", AZURE_TOPIC + "kind=health" if azure
                                  else default_of(MQTTConfig, "health_topic"), device_id)
    username = _username(r, m, AZURE_USERNAME if azure else default_of(MQTTConfig, "username"), device_id,
                         host or "")
    password_file = r.file(m, "password_file", "mqtt", required=False)
    password, password_source = config_broker.password(r, password_file, username)
    reconnect = _reconnect(r, m.get("reconnect"))
    tls = _tls(r, m["tls"]) if m.get("tls") is not None else None
    # Every key is read (and its problems reported) whether or not the section can be built.
    inflight = r.setting(m, MQTTConfig, "inflight", "mqtt")
    protocol = _protocol(r, m)
    clean_session = r.setting(m, MQTTConfig, "clean_session", "mqtt")
    session_expiry = r.setting(m, MQTTConfig, "session_expiry", "mqtt")
    message_expiry = r.setting(m, MQTTConfig, "message_expiry", "mqtt")
    _version_specific_keys(r, m, protocol)
    if (hosts is None or host is None or client_id is None or topic is None or status_topic is None
            or health_topic is None or reconnect is None):
        return None
    return MQTTConfig(host=host, port=port, client_id=client_id, keepalive=keepalive, qos=qos, topic=topic,
                      status_topic=status_topic, reconnect=reconnect, tls=tls,
                      clean_session=bool(clean_session), inflight=inflight,
                      protocol=protocol or default_of(MQTTConfig, "protocol"), session_expiry=session_expiry,
                      message_expiry=message_expiry, username=username,
                      target=target, health_topic=health_topic, password=password,
                      password_file=password_file, password_source=password_source, hosts=hosts,
                      failback=failback)


def _reconnect(r: Reader, raw: Any) -> Optional[ReconnectConfig]:
    rc = r.section(raw, "mqtt.reconnect", keys_of(ReconnectConfig))
    min_delay = r.setting(rc, ReconnectConfig, "min_delay", "mqtt.reconnect")
    max_delay = r.setting(rc, ReconnectConfig, "max_delay", "mqtt.reconnect")
    if max_delay < min_delay:
        r.problem("mqtt.reconnect.max_delay", "%s is below min_delay %s" % (max_delay, min_delay))
    spread = r.setting(rc, ReconnectConfig, "spread", "mqtt.reconnect")
    return ReconnectConfig(min_delay=min_delay, max_delay=max_delay, spread=spread)


def _protocol(r: Reader, m: Mapping[str, Any]) -> Optional[str]:
    """The MQTT version, or None after a problem (then neither version's own keys are judged)."""
    raw = m.get("protocol")
    if raw is None:
        return str(default_of(MQTTConfig, "protocol"))
    # `protocol: 5` is an integer to YAML, `protocol: 3.1.1` a string: both are meant.
    text = str(raw) if isinstance(raw, (str, int)) and not isinstance(raw, bool) else None
    # 4 is MQTT 3.1.1's protocol level: what brokers' logs and paho (MQTTv311) call it.
    text = "3.1.1" if text == "4" else text
    if text is None or text not in (choices_of(MQTTConfig, "protocol") or ()):
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


def template_topic(r: Reader, m: Mapping[str, Any], key: str, default: str, device_id: str,
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
    t = r.section(raw, "mqtt.tls", keys_of(TLSConfig))
    ca_file = r.file(t, "ca_file", "mqtt.tls", required=True)
    cert_file = r.file(t, "cert_file", "mqtt.tls", required=False)
    key_file = r.file(t, "key_file", "mqtt.tls", required=False)
    if "cert_file" in t and "key_file" not in t:
        r.problem("mqtt.tls.key_file", "cert_file is set but key_file is not: the broker needs both")
    if "key_file" in t and "cert_file" not in t:
        r.problem("mqtt.tls.cert_file", "key_file is set but cert_file is not: the broker needs both")
    min_version = r.value(t, "min_version", "mqtt.tls", str, default=default_of(TLSConfig, "min_version"))
    if min_version not in (choices_of(TLSConfig, "min_version") or ()):
        r.problem("mqtt.tls.min_version", "%s is refused: TLS below 1.2 is broken and OpenSSL 3 will not "
                  "speak it; use \"1.2\" or \"1.3\" (and tls_version tlsv1.2 on the broker)" % brief(min_version))
    verify_hostname = r.setting(t, TLSConfig, "verify_hostname", "mqtt.tls")
    session_resumption = r.setting(t, TLSConfig, "session_resumption", "mqtt.tls")
    alpn = _alpn(r, t)
    server_name = r.setting(t, TLSConfig, "server_name", "mqtt.tls")
    if server_name is not None and (not server_name or len(server_name) > 253
                                   or any(c.isspace() or ord(c) < 32 for c in server_name)):
        r.problem("mqtt.tls.server_name", "%s is not a host name: give the name in the broker's certificate"
                  % brief(server_name))
    pass_file = r.file(t, "key_password_file", "mqtt.tls", required=False)
    password, source = _key_password(r, pass_file)
    if key_file is not None and key_file.is_file() and os.access(key_file, os.R_OK):
        _check_key_file(r, key_file, password)
    if ca_file is None:
        return None
    return TLSConfig(ca_file=ca_file, cert_file=cert_file, key_file=key_file, key_password=password,
                     key_password_file=pass_file, key_password_source=source, min_version=min_version,
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


def _key_password(r: Reader, pass_file: Optional[Path]) -> Tuple[Optional[str], Optional[str]]:
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
