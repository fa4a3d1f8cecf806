"""`edison-agent doctor`: offline checks of the TLS files, then one live connection, one line per check.

Every verdict for a live failure comes from agent.mqtt.tls (describe_failure, describe_alert,
describe_connack): the same words the daemon logs when its connection fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import ssl
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional

from agent.config import schema
from agent.config.problems import ConfigError
from agent.config.sections import MQTTConfig, TLSConfig
from agent.mqtt import problems, tls
from agent.mqtt.broker_probe import SPEAKS_311_ONLY, answers_mqtt311
from agent.mqtt.wire import connect_packet, read_packet, reason_string
from agent.tools.doctor.files import (  # noqa: F401 - Check, OK and the rest are doctor's vocabulary too
    OK,
    PROBLEM,
    SKIPPED,
    UTC,
    WARNING,
    Check,
    Target,
    cert_dates,
    certificate_cn,
    crypto_available,
    fmt_date,
    key_usages,
    offline_checks,
    oid_name,
    peek_broker_certificate,
)
from agent.tools.doctor.publish import publish_checks

# The statuses and Check are how a caller reads run_checks' answer, so they are exported from here.
__all__ = ["OK", "PROBLEM", "SKIPPED", "WARNING", "Check", "add_doctor_parser", "run_checks", "run_doctor"]

TIMEOUT = 10.0


def run_checks(config_path: Path, now: Optional[datetime.datetime] = None) -> List[Check]:
    """All checks, in order."""
    now = now or datetime.datetime.now(UTC)
    checks: List[Check] = []
    target = _read_target(Path(config_path), checks)
    if target is None:
        return checks
    if target.tls_on:
        usable = offline_checks(target, checks, now)
    else:
        checks.append(Check("tls", WARNING, "mqtt.tls is not set: readings and the device's identity cross "
                            "the network in clear text", "configure mqtt.tls (see docs/certificates.md)"))
        usable = True
    if target.host is None:
        checks.append(Check("broker", SKIPPED, "no mqtt.host in %s" % target.config_path, "set mqtt.host"))
    elif not usable:
        checks.append(Check("broker", SKIPPED, "live connection not tried: fix the problems above first"))
    elif len(target.hosts) > 1:
        # mqtt.hosts: every gateway is checked, each with its own name against its certificate.
        for i, (host, port) in enumerate(target.hosts, 1):
            checks.append(Check("broker", OK, "%s:%d (%d of %d in mqtt.hosts)" % (host, port, i, len(target.hosts))))
            _live_checks(replace(target, host=host, port=port), checks)
    else:
        _live_checks(target, checks)
    return checks


# --- the config -----------------------------------------------------------------------


def _read_target(path: Path, checks: List[Check]) -> Optional[Target]:
    """What the loader read, even from a config with problems: the TLS files it names get checks of
    their own below (with the fix), so their problems are not repeated as config problems."""
    # mqtt.tls is written but could not be read (no ca_file): TLS stays on, and nothing goes out in clear.
    tls_unread = False
    try:
        mqtt: Optional[MQTTConfig] = schema.load(path).mqtt
        checks.append(Check("config", OK, "%s is valid" % path))
    except ConfigError as exc:
        try:
            mqtt = schema.mqtt_as_far_as_it_reads(path)
        except ConfigError:
            mqtt = None  # the file itself: the problem below says why
        own = mqtt is not None and mqtt.tls is not None
        for problem in exc.outside("mqtt.tls") if own else exc.problems:
            checks.append(Check("config", PROBLEM, problem))
        if mqtt is None and not exc.outside(""):
            return None
        tls_unread = exc.outside("mqtt.tls") != exc.problems
    if mqtt is None:
        return Target(config_path=path, tls_on=tls_unread)
    return Target(config_path=path, mqtt=mqtt, tls_on=tls_unread or mqtt.tls is not None, host=mqtt.host,
                  port=mqtt.port)


# --- live -------------------------------------------------------------------------------


def _live_checks(t: Target, checks: List[Check]) -> None:
    assert t.host is not None
    host, port = t.host, t.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        checks.append(Check("dns", PROBLEM, problems.describe_failure(exc, host, port), "check mqtt.host"))
        return
    address = str(infos[0][4][0])
    checks.append(Check("dns", OK, "%s is %s" % (host, address)))
    try:
        raw = socket.create_connection((address, port), timeout=TIMEOUT)
    except OSError as exc:
        checks.append(Check("tcp", PROBLEM, "%s (address tried: %s port %d)"
                            % (problems.describe_failure(exc, host, port), address, port),
                            "start the broker, or correct mqtt.host/mqtt.port"))
        return
    checks.append(Check("tcp", OK, "connected to %s port %d" % (address, port)))
    sock: socket.socket = raw
    try:
        if t.tls_on:
            tls_sock = _handshake(t, raw, checks)
            if tls_sock is None:
                return
            sock = tls_sock
        _mqtt_connect(t, sock, checks)
    finally:
        sock.close()
        raw.close()


def _tls_config(t: Target) -> TLSConfig:
    """The loaded mqtt.tls, with the passphrase as the offline checks read it."""
    assert t.tls is not None
    return replace(t.tls, key_password=t.password, key_password_source=t.password_source)


def _handshake(t: Target, raw: socket.socket, checks: List[Check]) -> Optional[ssl.SSLSocket]:
    assert t.host is not None
    try:
        ctx = tls.build_context(_tls_config(t))
    except problems.TLSSetupError as exc:
        checks.append(Check("tls handshake", SKIPPED, str(exc)))
        return None
    try:
        sock = ctx.wrap_socket(raw, server_hostname=t.host)
    except ssl.SSLCertVerificationError as exc:
        detail = problems.describe_failure(exc, t.host, t.port)
        peek = peek_broker_certificate(t)
        checks.append(Check("tls handshake", PROBLEM, detail + ("; " + peek if peek else ""),
                            _verify_fix(exc)))
        return None
    except ssl.SSLError as exc:
        detail = problems.describe_failure(exc, t.host, t.port)
        checks.append(Check("tls handshake", PROBLEM, detail,
                            _refusal_fix(t, Verdict(detail, revoked=_revoked(exc)))
                            or "see docs/troubleshooting.md (raw error: %s)" % exc))
        return None
    except ConnectionResetError as exc:
        # What a plain MQTT port does with a ClientHello; the words are problems.describe_failure's, as in the log.
        checks.append(Check("tls handshake", PROBLEM, problems.describe_failure(exc, t.host, t.port),
                            "set mqtt.port to the broker's TLS listener"))
        return None
    except OSError as exc:
        checks.append(Check("tls handshake", PROBLEM, "the broker closed the connection during the TLS "
                            "handshake (%s): it probably refused our client certificate, or the port does "
                            "not speak TLS" % (exc.strerror or exc), "check the broker's log"))
        return None
    cipher = sock.cipher()
    checks.append(Check("tls handshake", OK, "%s %s, broker certificate verified against %s%s%s"
                        % (sock.version(), cipher[0] if cipher else "?", t.ca_file,
                           "" if t.verify_hostname else " (hostname NOT checked)", _alpn_outcome(t, sock))))
    return sock


def _alpn_outcome(t: Target, sock: ssl.SSLSocket) -> str:
    if not t.alpn:
        return ""
    chosen = sock.selected_alpn_protocol()
    # A broker that ignores ALPN still completes the handshake: say so, it matters on port 443.
    return ", ALPN %s" % chosen if chosen else ", ALPN offered (%s) but none agreed" % ", ".join(t.alpn)


def _verify_fix(exc: ssl.SSLCertVerificationError) -> str:
    message = exc.verify_message or ""
    if "mismatch" in message:
        return "set mqtt.host to a name in the certificate's SANs, or re-issue it: 'edison-agent pki " \
               "issue-broker DIR HOSTNAME --ip ADDR'"
    if "issuer" in message or "self" in message:
        return "set mqtt.tls.ca_file to the CA that signed the broker's certificate"
    if "expired" in message or "not yet valid" in message:
        return "re-issue the broker's certificate, or fix the clock"
    if "purpose" in message:
        return "re-issue it with 'edison-agent pki issue-broker' (serverAuth)"
    return "see docs/troubleshooting.md"


@dataclass(frozen=True)
class Verdict:
    """Why the broker closed the connection or refused us: the words, and what they say for the fix."""
    detail: str
    # The broker's alert 44: this device's certificate is on the CA's revocation list.
    revoked: bool = False
    mqtt311_only: bool = False
    # False: a bare close that nothing explained.
    explained: bool = True


def _revoked(exc: ssl.SSLError) -> bool:
    # OpenSSL's own name for alert 44, received: a code, not words.
    return getattr(exc, "reason", None) == "SSLV3_ALERT_CERTIFICATE_REVOKED"


def _refusal_fix(t: Target, verdict: Verdict) -> str:
    if verdict.revoked:
        return ("issue this device a new certificate ('edison-agent pki issue-device --force DIR %s', or "
                "'pki renew DIR %s') and install it as %s; the revoked one stays refused"
                % (t.client_id, t.client_id, t.cert_file))
    return ""


def _refusal_under_tls12(t: Target) -> Optional[Verdict]:
    """Why the broker refused us, asked again over TLS 1.2, or None.

    Under TLS 1.3 a broker judges the client certificate after the client's handshake has
    returned; its alert races our CONNECT, and when the broker closes with the CONNECT unread
    the reset can discard the alert. Under TLS 1.2 the alert ends the handshake itself."""
    assert t.host is not None
    try:
        ctx = tls.build_context(_tls_config(t))
    except problems.TLSSetupError:
        return None
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with socket.create_connection((t.host, t.port), timeout=TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname=t.host):
            return None
    except ssl.SSLError as exc:
        # Only a verdict on our certificate: a broker requiring TLS 1.3 answers this probe with
        # "protocol version", which says nothing about the close being explained.
        words = problems.describe_alert(str(exc))
        return Verdict(words, revoked=_revoked(exc)) if words and words in problems.CLIENT_CERT_REFUSALS else None
    except OSError:
        return None


def _why_closed(t: Target, tls13: bool, closed: str) -> Verdict:
    refusal = _refusal_under_tls12(t) if tls13 else None
    if refusal is None and t.protocol == "5" and _answers_mqtt311(t):
        return Verdict(SPEAKS_311_ONLY, mqtt311_only=True)
    return refusal or Verdict(closed, explained=False)


def _answers_mqtt311(t: Target) -> bool:
    """A broker that closed on our MQTT 5 CONNECT, asked again in MQTT 3.1.1 (RabbitMQ 3.x closes on
    a CONNECT it cannot parse, which under TLS 1.3 looks like a refused certificate)."""
    assert t.host is not None
    try:
        ctx = tls.build_context(_tls_config(t)) if t.tls_on else None
    except problems.TLSSetupError:
        return False
    return answers_mqtt311(t.host, t.port, ctx, t.client_id, t.keepalive, t.username, t.mqtt_password)


def _closed_fix(t: Target, verdict: Verdict, fix: str) -> str:
    if verdict.mqtt311_only:
        return "set mqtt.protocol: 4 (or remove the key: MQTT 3.1.1 is the default)"
    return _refusal_fix(t, verdict) or fix


def _mqtt_connect(t: Target, sock: socket.socket, checks: List[Check]) -> None:
    closed = problems.REJECTED_AFTER_HANDSHAKE if t.tls_on else "broker closed the connection before CONNACK"
    fix = "check the broker's log: does its cafile hold the CA that signed %s?" % t.cert_file
    v5 = t.protocol == "5"
    tls13 = isinstance(sock, ssl.SSLSocket) and sock.version() == "TLSv1.3"
    try:
        sock.settimeout(TIMEOUT)
        sock.sendall(connect_packet(t.client_id, t.keepalive, t.protocol, t.username, t.mqtt_password))
        reply = read_packet(sock)
    except socket.timeout:
        checks.append(Check("mqtt connect", PROBLEM, "no CONNACK within %g s" % TIMEOUT,
                            "is this port an MQTT listener? check the broker's log"))
        return
    except ssl.SSLError as exc:
        alert = problems.describe_alert(str(exc))
        verdict = Verdict(alert, revoked=_revoked(exc)) if alert else _why_closed(t, tls13, closed)
        checks.append(Check("mqtt connect", PROBLEM, verdict.detail, _closed_fix(t, verdict, fix)))
        return
    except OSError as exc:
        verdict = _why_closed(t, tls13, closed)
        detail = verdict.detail if verdict.explained else "%s (%s)" % (closed, exc.strerror or exc)
        checks.append(Check("mqtt connect", PROBLEM, detail, _closed_fix(t, verdict, fix)))
        return
    if len(reply) < 4:
        verdict = _why_closed(t, tls13, closed)
        checks.append(Check("mqtt connect", PROBLEM, verdict.detail, _closed_fix(t, verdict, fix)))
        return
    if reply[0] != 0x20:
        checks.append(Check("mqtt connect", PROBLEM, "the broker answered CONNECT with packet type 0x%02x, "
                            "not CONNACK" % reply[0], "is this port an MQTT listener?"))
        return
    header = 1 + next((i for i, b in enumerate(reply[1:5], 1) if not b & 0x80), 1)
    code = reply[header + 1]
    reason: Optional[str] = None
    if v5:
        # After the flags and the reason code: the properties' length, then the properties.
        rest = reply[header + 2:]
        length_bytes = 1 + next((i for i, b in enumerate(rest[:4]) if not b & 0x80), 0)
        reason = reason_string(rest[length_bytes:])
    if code != 0:
        if v5:
            detail = "broker refused the connection (MQTT 5 CONNACK %s)" % problems.describe_reason_code(code, reason)
            if code == 0x84:
                fix = "set mqtt.protocol: 4 (the broker speaks MQTT 3.1.1 only)"
            else:
                fix = _identity_fix(t, {0x86: 4, 0x87: 5}.get(code, 0))
            checks.append(Check("mqtt connect", PROBLEM, detail, fix))
        else:
            checks.append(Check("mqtt connect", PROBLEM, problems.describe_connack(code), _identity_fix(t, code)))
        return
    checks.append(Check("mqtt connect", OK, "CONNACK accepted client id %r%s" % (
        t.client_id, " (MQTT 5, %s)" % problems.describe_reason_code(code, reason) if v5 else "")))
    # CONNECT alone says nothing of the topics: RabbitMQ accepts the connection and ends it at the
    # first publish its topic permissions refuse.
    publish_checks(t, sock, tls.build_context(_tls_config(t)) if t.tls_on else None, checks)


def _identity_fix(t: Target, connack: int) -> str:
    """What to do about CONNACK 4 or 5, naming the user the broker most likely looked up."""
    if t.username is not None:
        user = "%r (mqtt.username)" % t.username
    else:
        cn = certificate_cn(t.cert_file) if t.cert_file is not None else None
        user = "%r (the certificate's CN)" % cn if cn else "the certificate's CN"
    if connack == 4:
        return "the user name is %s: create that user on the broker%s" % (
            user, ", with the password in mqtt.password_file" if t.mqtt_password is not None else "")
    if connack == 5:
        return "allow %s and client id %r in the broker's ACL/policy" % (user, t.client_id)
    return "check the broker's log for client id %r" % t.client_id


# --- command line -----------------------------------------------------------------------


def add_doctor_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
                      default_config: Path) -> None:
    doctor = subparsers.add_parser("doctor", help="check the certificates and one live connection, "
                                   "and say what is wrong in plain words")
    doctor.add_argument("-c", "--config", type=Path, default=default_config, help="default: %(default)s")
    doctor.add_argument("--json", action="store_true", help="print a JSON list of {check, status, detail, fix}")
    doctor.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    checks = run_checks(args.config)
    if args.json:
        out(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for c in checks:
            out(c.line())
    sys.stdout.flush()
    return 1 if any(c.status == PROBLEM for c in checks) else 0
