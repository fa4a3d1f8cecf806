"""What each broker needs for the agent's mutual TLS, for `pki issue-broker --broker ...` (issue 19):
Mosquitto's listener block, RabbitMQ's rabbitmq.conf lines with the user to create per device,
EMQX's listener; and `--install-dir`, which copies the CA, the broker's certificate and key where
the broker's own user can read them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from agent.atomic_file import replace_file
from agent.tools.pki.keys import PkiError, check_name, group_id

BROKERS = ("mosquitto", "rabbitmq", "emqx")
# The system user and group each broker's Debian package runs as.
BROKER_GROUPS: Dict[str, str] = {"mosquitto": "mosquitto", "rabbitmq": "rabbitmq", "emqx": "emqx"}
CONFIG_FILES: Dict[str, str] = {"mosquitto": "mosquitto.conf (or a file in /etc/mosquitto/conf.d/)",
                                "rabbitmq": "/etc/rabbitmq/rabbitmq.conf", "emqx": "etc/emqx.conf"}


def snippet(broker: str, ca: Path, cert: Path, key: Path, port: int = 8883) -> str:
    """The broker's configuration for mutual TLS with the certificate's CN as the user name."""
    ca, cert, key = ca.resolve(), cert.resolve(), key.resolve()
    if broker == "mosquitto":
        return mosquitto_listener(ca, cert, key, port=port)
    if broker == "rabbitmq":
        return "\n".join([
            "# rabbitmq-plugins enable rabbitmq_mqtt",
            "mqtt.listeners.tcp = none",
            "mqtt.listeners.ssl.default = %d" % port,
            "ssl_options.cacertfile = %s" % ca,
            "ssl_options.certfile = %s" % cert,
            "ssl_options.keyfile = %s" % key,
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = true",
            "ssl_options.versions.1 = tlsv1.3",
            "ssl_options.versions.2 = tlsv1.2",
            # The MQTT plugin then takes the user name from the certificate, not from CONNECT;
            # the default source is the whole DN, which no device's user is named after.
            "mqtt.ssl_cert_login = true",
            "ssl_cert_login_from = common_name",
            "mqtt.allow_anonymous = false",
        ])
    if broker == "emqx":
        return "\n".join([
            "listeners.ssl.default {",
            "  bind = \"0.0.0.0:%d\"" % port,
            "  ssl_options {",
            "    cacertfile = \"%s\"" % ca,
            "    certfile = \"%s\"" % cert,
            "    keyfile = \"%s\"" % key,
            "    verify = verify_peer",
            "    fail_if_no_peer_cert = true",
            "    versions = [\"tlsv1.3\", \"tlsv1.2\"]",
            "  }",
            "}",
            "# the certificate's CN is the user name that authentication and authorization rules see",
            "mqtt.peer_cert_as_username = cn",
        ])
    raise PkiError("--broker %s: one of %s" % (broker, ", ".join(BROKERS)))


def per_device(broker: str, prefix: str = "edison") -> str:
    """What the broker needs for each device NAME (the certificate's CN), beyond the snippet."""
    if broker == "rabbitmq":
        # Topic permissions match routing keys: the MQTT plugin maps '/' to '.', so a device id with
        # a '.' would land on another topic (device ids are letters, digits, '-' and '_').
        return "\n".join([
            "# for each device NAME: a user named as its certificate's CN. Its password is never used",
            "# (the certificate logs in), so it is cleared.",
            "rabbitmqctl add_user NAME \"$(openssl rand -base64 24)\"",
            "rabbitmqctl clear_password NAME",
            "rabbitmqctl set_permissions -p / NAME '^(amq\\.topic|mqtt-subscription-NAME.*)$' "
            "'^(amq\\.topic|mqtt-subscription-NAME.*)$' '^(amq\\.topic|mqtt-subscription-NAME.*)$'",
            "rabbitmqctl set_topic_permissions -p / NAME amq.topic '^%s\\.NAME\\.' '^%s\\.NAME\\.cmd\\.'"
            % (prefix, prefix),
        ])
    if broker == "emqx":
        return ("# authorization (etc/acl.conf): each certificate under its own prefix, e.g.\n"
                "# {allow, all, publish, [\"%s/${username}/#\"]}.\n"
                "# {allow, all, subscribe, [\"%s/${username}/cmd/#\"]}." % (prefix, prefix))
    return "# per device: nothing to create; an acl_file confines each CN: edison-agent pki acl"


def install(directory: Path, broker: str, ca: Path, cert: Path, key: Path) -> Tuple[Path, Path, Path, str]:
    """Copy the three files into `directory`: certificates 0644, the key 0640 owned by root and the
    broker's group when that group exists (the broker reads it after dropping root), else 0600.
    Returns the new paths and a line saying who can read the key."""
    group = BROKER_GROUPS[broker]
    gid = group_id(group)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        targets = directory / ca.name, directory / cert.name, directory / key.name
        for source, target in zip((ca, cert), targets[:2]):
            replace_file(target, source.read_bytes(), 0o644)
        new_key = targets[2]
        # Private from its first byte: never a moment at the default umask's 0644.
        replace_file(new_key, key.read_bytes(), 0o600)
    except OSError as exc:
        raise PkiError("--install-dir %s: %s" % (directory, exc.strerror or exc)) from None
    if gid is None:
        return targets[0], targets[1], new_key, ("%s: mode 0600, readable by this user only: there is no %s "
                                                 "group here; run the broker as this user, or give the key "
                                                 "to its group" % (new_key, group))
    try:
        os.chown(new_key, 0 if os.geteuid() == 0 else -1, gid)
        os.chmod(new_key, 0o640)
    except OSError as exc:
        return targets[0], targets[1], new_key, ("%s: mode 0600: cannot give it to group %s (%s): run as root"
                                                 % (new_key, group, exc.strerror))
    owner = "root" if os.geteuid() == 0 else "this user"
    return targets[0], targets[1], new_key, "%s: mode 0640, %s:%s (the broker reads it as %s)" % (
        new_key, owner, group, group)


def mosquitto_listener(ca_file: Path, cert_file: Path, key_file: Path, port: int = 8883,
                       address: Optional[str] = None, crlfile: Optional[Path] = None) -> str:
    """The mosquitto.conf listener block for a broker certificate from this tool.

    With `crlfile` (DIR/crl.pem from 'pki revoke' or 'pki crl') the broker refuses revoked devices."""
    lines = [
        "listener %s" % port + (" %s" % address if address else ""),
        "cafile %s" % ca_file.resolve(),
        "certfile %s" % cert_file.resolve(),
        "keyfile %s" % key_file.resolve(),
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        # Nagle plus delayed ACKs adds ~40 ms to every TLS handshake otherwise.
        "set_tcp_nodelay true",
    ]
    if crlfile is not None:
        lines.append("crlfile %s" % crlfile.resolve())
    return "\n".join(lines)


def mosquitto_acl(operators: Sequence[str] = ("operator",), prefix: str = "edison") -> str:
    """An acl_file for mosquitto: each device under its own prefix, commands from operators only."""
    for name in operators:
        check_name(name, "operator name")
    if not prefix or any(c in prefix for c in "+# %"):
        raise PkiError("--prefix %r: a topic level without '+', '#', '%%' or spaces" % prefix)
    lines = [
        "# Mosquitto ACL for edison-agent: acl_file in mosquitto.conf. The TLS listener needs",
        "# use_identity_as_username true, so a client's username is its certificate's CN, which",
        "# no client can choose. A topic not granted below is denied; a denied publish is dropped",
        "# silently by the broker (the publisher still gets its PUBACK).",
        "",
        "# Every certificate (%u is its CN): publish only under its own prefix, read its own",
        "# commands. Not " + prefix + "/%u/#: that would let a device write commands, to itself at least.",
        "pattern write " + prefix + "/%u/telemetry",
        "pattern write " + prefix + "/%u/status",
        "pattern write " + prefix + "/%u/health",
        "pattern write " + prefix + "/%u/reply/#",
        "pattern read " + prefix + "/%u/cmd/#",
    ]
    for name in operators:
        lines += [
            "",
            "# Operator %s: commands to every device, and everything devices publish." % name,
            "user %s" % name,
            "topic write %s/+/cmd/#" % prefix,
            "topic read %s/#" % prefix,
        ]
    return "\n".join(lines) + "\n"
