"""`edison-agent doctor`: offline checks of the TLS files, then one live connection, one line per check.

Every verdict for a live failure comes from agent.tls (describe_failure, describe_alert,
describe_connack): the same words the daemon logs when its connection fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import ssl
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml

from agent import config as config_module
from agent import tls
from agent.config import KEY_PASSWORD_ENV, TLSConfig

OK, PROBLEM, WARNING, SKIPPED = "ok", "problem", "warning", "skipped"
EXPIRY_WARNING_DAYS = 30
TIMEOUT = 10.0
UTC = datetime.timezone.utc


@dataclass(frozen=True)
class Check:
    check: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = "%-8s %s: %s" % (self.status.upper() if self.status == PROBLEM else self.status, self.check,
                                self.detail)
        return text + (" -- fix: %s" % self.fix if self.fix else "")


@dataclass
class Target:
    """What the doctor needs from the config, read leniently: a missing file is a finding, not a crash."""
    config_path: Path
    host: Optional[str] = None
    port: int = 8883
    client_id: str = ""
    keepalive: int = 60
    tls_on: bool = False
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    password_file: Optional[Path] = None
    password: Optional[str] = None
    password_source: Optional[str] = None
    min_version: str = "1.2"
    verify_hostname: bool = True
    protocol: str = "3.1.1"
    username: Optional[str] = None
    alpn: Tuple[str, ...] = ()
    server_name: Optional[str] = None


def run_checks(config_path: Path, now: Optional[datetime.datetime] = None,
               _max_tls: Optional[ssl.TLSVersion] = None) -> List[Check]:
    """All checks, in order. `_max_tls` (tests) caps the client's TLS version, as an OpenSSL without
    TLS 1.3 (the Edison's stock 1.0.2) would."""
    now = now or datetime.datetime.now(UTC)
    checks: List[Check] = []
    target = _read_target(Path(config_path), checks)
    if target is None:
        return checks
    if target.tls_on:
        usable = _offline_checks(target, checks, now)
    else:
        checks.append(Check("tls", WARNING, "mqtt.tls is not set: readings and the device's identity cross "
                            "the network in clear text", "configure mqtt.tls (see docs/certificates.md)"))
        usable = True
    if target.host is None:
        checks.append(Check("broker", SKIPPED, "no mqtt.host in %s" % target.config_path, "set mqtt.host"))
    elif not usable:
        checks.append(Check("broker", SKIPPED, "live connection not tried: fix the problems above first"))
    else:
        _live_checks(target, checks, _max_tls)
    return checks


# --- the config -----------------------------------------------------------------------


def _read_target(path: Path, checks: List[Check]) -> Optional[Target]:
    loaded: Optional[config_module.AgentConfig] = None
    try:
        loaded = config_module.load(path)
        checks.append(Check("config", OK, "%s is valid" % path))
    except config_module.ConfigError as exc:
        # TLS file problems get their own checks below, with the fix.
        for problem in exc.problems:
            if ": mqtt.tls" not in problem:
                checks.append(Check("config", PROBLEM, problem))
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # config.load has said why, in one line
    if not isinstance(tree, dict):
        return None
    base = path.resolve().parent
    mqtt = _mapping(tree.get("mqtt"))
    device_id = str(_mapping(tree.get("device")).get("id") or socket.gethostname())
    target = Target(config_path=path)
    host = mqtt.get("host")
    target.host = str(host) if host else None
    target.port = _int(mqtt.get("port"), 8883)
    target.keepalive = _int(mqtt.get("keepalive"), 60)
    target.client_id = str(mqtt.get("client_id") or device_id)
    t = mqtt.get("tls")
    if isinstance(t, dict):
        target.tls_on = True
        target.ca_file = _path(base, t.get("ca_file"))
        target.cert_file = _path(base, t.get("cert_file"))
        target.key_file = _path(base, t.get("key_file"))
        target.password_file = _path(base, t.get("key_password_file"))
        target.min_version = str(t.get("min_version") or "1.2")
        target.verify_hostname = t.get("verify_hostname", True) is not False
        alpn = t.get("alpn")
        target.alpn = tuple(str(a) for a in alpn) if isinstance(alpn, list) else ()
        target.server_name = str(t["server_name"]) if t.get("server_name") else None
    target.protocol = "5" if str(mqtt.get("protocol")) == "5" else "3.1.1"
    if loaded is not None:
        # The user name may come from a template or a target's default: the loader's reading is the one sent.
        target.username = loaded.mqtt.username
    return target


def _mapping(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _path(base: Path, raw: Any) -> Optional[Path]:
    if not raw:
        return None
    p = Path(os.path.expanduser(str(raw)))
    return p if p.is_absolute() else base / p


# --- offline ----------------------------------------------------------------------------


def _offline_checks(t: Target, checks: List[Check], now: datetime.datetime) -> bool:
    """True if the live connection can be tried (the files load)."""
    cfg = t.config_path
    readable = {}
    files = [("ca_file", t.ca_file, "the CA that signed the broker's certificate (ca.crt from "
              "'edison-agent pki init-ca')"),
             ("cert_file", t.cert_file, "this device's certificate ('edison-agent pki issue-device DIR NAME')"),
             ("key_file", t.key_file, "this device's private key (written next to its certificate)"),
             ("key_password_file", t.password_file, "a file whose first line is the key's passphrase")]
    for key, path, what in files:
        if path is None:
            if key == "ca_file":
                checks.append(Check("ca_file", PROBLEM, "%s: mqtt.tls.ca_file is not set" % cfg,
                                    "set it to %s" % what))
            elif key in ("cert_file", "key_file") and (t.cert_file or t.key_file):
                checks.append(Check(key, PROBLEM, "%s: mqtt.tls.%s is not set but its pair is" % (cfg, key),
                                    "set both cert_file and key_file"))
            continue
        readable[key] = _file_check(key, path, what, checks)
    if t.password_file is not None and readable.get("key_password_file"):
        lines = t.password_file.read_text(encoding="utf-8", errors="replace").splitlines()
        if lines and lines[0]:
            t.password, t.password_source = lines[0], "file %s" % t.password_file
        else:
            checks.append(Check("key_password_file", PROBLEM, "%s is empty" % t.password_file,
                                "put the key's passphrase on its first line"))
    elif t.password_file is None and os.environ.get(KEY_PASSWORD_ENV):
        t.password, t.password_source = os.environ[KEY_PASSWORD_ENV], "environment variable %s" % KEY_PASSWORD_ENV
    usable = bool(readable.get("ca_file"))
    if t.cert_file is not None and t.key_file is not None:
        usable = usable and bool(readable.get("cert_file")) and bool(readable.get("key_file"))
        if readable.get("key_file"):
            _key_mode_check(t.key_file, checks)
        if readable.get("cert_file") and readable.get("key_file"):
            usable = _key_checks(t, checks) and usable
    if readable.get("cert_file") and t.cert_file is not None:
        _date_check("client certificate", t.cert_file, checks, now)
        _client_usage_check(t.cert_file, checks)
        if readable.get("ca_file") and t.ca_file is not None:
            _chain_check(t.cert_file, t.ca_file, checks)
    if readable.get("ca_file") and t.ca_file is not None:
        _date_check("CA certificate", t.ca_file, checks, now)
    return usable


def _file_check(key: str, path: Path, what: str, checks: List[Check]) -> bool:
    name = "mqtt.tls.%s" % key
    if not path.exists():
        checks.append(Check(key, PROBLEM, "%s: file not found: %s" % (name, path),
                            "correct the path, or put %s there" % what))
        return False
    if not path.is_file():
        checks.append(Check(key, PROBLEM, "%s: not a regular file: %s" % (name, path), "point it at a file"))
        return False
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        st = path.stat()
        checks.append(Check(key, PROBLEM, "%s: %s is not readable by this user (uid %d; file owner uid %d, "
                            "mode %04o): %s" % (name, path, os.getuid(), st.st_uid, st.st_mode & 0o7777,
                                                exc.strerror), "run the agent as the file's owner, or chown it "
                            "to the service user"))
        return False
    checks.append(Check(key, OK, "%s is readable" % path))
    return True


def _key_mode_check(key_file: Path, checks: List[Check]) -> None:
    mode = key_file.stat().st_mode & 0o7777
    if mode & 0o004:
        checks.append(Check("key permissions", PROBLEM, "%s is readable by every user (mode %04o)"
                            % (key_file, mode), "chmod 600 %s" % key_file))
    else:
        checks.append(Check("key permissions", OK, "%s has mode %04o" % (key_file, mode)))


def _key_checks(t: Target, checks: List[Check]) -> bool:
    assert t.cert_file is not None and t.key_file is not None
    head = t.key_file.read_bytes()[:4096]
    if b"PRIVATE KEY" not in head:
        checks.append(Check("key", PROBLEM, "%s holds no PEM private key" % t.key_file,
                            "point mqtt.tls.key_file at the key written with the certificate"))
        return False
    encrypted = b"ENCRYPTED" in head
    if encrypted and t.password is None:
        checks.append(Check("key passphrase", PROBLEM, "%s is encrypted but no passphrase is configured"
                            % t.key_file, "set mqtt.tls.key_password_file (passphrase on its first line) "
                            "or the environment variable %s" % KEY_PASSWORD_ENV))
        return False
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(str(t.cert_file), str(t.key_file), password=lambda: t.password or "")
    except ssl.SSLError as exc:
        text = str(exc)
        if "KEY_VALUES_MISMATCH" in text:
            checks.append(Check("key matches certificate", PROBLEM, "%s is not the private key of %s"
                                % (t.key_file, t.cert_file), "set mqtt.tls.key_file to the key issued "
                                "with this certificate, or re-issue both"))
        elif encrypted:
            checks.append(Check("key passphrase", PROBLEM, "wrong passphrase for %s (passphrase from %s)"
                                % (t.key_file, t.password_source), "put the right passphrase there"))
        else:
            checks.append(Check("key", PROBLEM, "cannot load %s with %s: %s" % (t.cert_file, t.key_file, exc),
                                "re-issue the pair with 'edison-agent pki issue-device'"))
        return False
    checks.append(Check("key passphrase", OK, "%s is encrypted; passphrase from %s works"
                        % (t.key_file, t.password_source) if encrypted else "%s is not encrypted" % t.key_file))
    checks.append(Check("key matches certificate", OK, "%s belongs to %s" % (t.key_file, t.cert_file)))
    return True


def _fmt(moment: datetime.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _date_check(what: str, path: Path, checks: List[Check], now: datetime.datetime) -> None:
    dates = tls.certificate_dates(str(path))
    name = "%s dates" % what
    if dates is None:
        checks.append(Check(name, PROBLEM, "%s is not a PEM certificate" % path,
                            "point the setting at the .crt file"))
        return
    start, end = dates
    valid = "valid %s to %s; this board's clock reads %s" % (_fmt(start), _fmt(end), _fmt(now))
    if now < start:
        if now.year < 2020:
            fix = ("the clock is %s: time is not synced yet; wait for NTP (timedatectl status) or set the date"
                   % now.strftime("%Y-%m-%d"))
        else:
            fix = "check the clocks of this board and of the machine that issued it, or re-issue it"
        checks.append(Check(name, PROBLEM, "%s is not yet valid: %s" % (path, valid), fix))
    elif now > end:
        checks.append(Check(name, PROBLEM, "%s is expired: %s" % (path, valid),
                            "issue a new one ('edison-agent pki issue-device --force DIR NAME'), "
                            "or fix the clock if it is wrong"))
    else:
        days = (end - now).days
        status = WARNING if days < EXPIRY_WARNING_DAYS else OK
        checks.append(Check(name, status, "%s expires %s (%d days left)" % (path, _fmt(end), days),
                            "renew it soon" if status == WARNING else ""))


def _crypto() -> bool:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


def _client_usage_check(cert_file: Path, checks: List[Check]) -> None:
    if not _crypto():
        checks.append(Check("client certificate usage", SKIPPED, "needs the 'cryptography' package"))
        return
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except ValueError:
        return  # the dates check has said it is not a certificate
    usages = _usages(cert)
    if usages is not None and not ({ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
                                   & set(usages)):
        checks.append(Check("client certificate usage", PROBLEM, "%s lacks extendedKeyUsage clientAuth (it has: "
                            "%s): brokers refuse it" % (cert_file, ", ".join(_oid_name(u) for u in usages)),
                            "issue a client certificate: 'edison-agent pki issue-device DIR NAME'"))
    else:
        checks.append(Check("client certificate usage", OK, "%s is valid for clientAuth" % cert_file))


def _usages(cert: Any) -> Optional[List[Any]]:
    from cryptography import x509

    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None  # no extension: any use


def _oid_name(oid: Any) -> str:
    return str(getattr(oid, "_name", None) or oid.dotted_string)


def _chain_check(cert_file: Path, ca_file: Path, checks: List[Check]) -> None:
    if not _crypto():
        checks.append(Check("client certificate issuer", SKIPPED, "needs the 'cryptography' package"))
        return
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        cas = x509.load_pem_x509_certificates(ca_file.read_bytes())
    except ValueError:
        return
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except Exception:  # noqa: BLE001, S112 - ValueError, TypeError, InvalidSignature: not this CA
            continue
        checks.append(Check("client certificate issuer", OK, "%s is signed by the CA in %s (%s)"
                            % (cert_file, ca_file, ca.subject.rfc4514_string())))
        return
    # A warning: a cloud broker may trust another CA for devices than the one that signed it.
    checks.append(Check("client certificate issuer", WARNING, "%s was signed by %s, not by the CA in %s: a broker "
                        "that trusts only that CA (require_certificate with this cafile) will refuse it"
                        % (cert_file, cert.issuer.rfc4514_string(), ca_file),
                        "issue the device certificate from the broker's CA"))


# --- live -------------------------------------------------------------------------------


def _live_checks(t: Target, checks: List[Check], max_tls: Optional[ssl.TLSVersion]) -> None:
    assert t.host is not None
    host, port = t.host, t.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        checks.append(Check("dns", PROBLEM, tls.describe_failure(exc, host, port), "check mqtt.host"))
        return
    address = str(infos[0][4][0])
    checks.append(Check("dns", OK, "%s is %s" % (host, address)))
    try:
        raw = socket.create_connection((address, port), timeout=TIMEOUT)
    except OSError as exc:
        checks.append(Check("tcp", PROBLEM, "%s (address tried: %s port %d)"
                            % (tls.describe_failure(exc, host, port), address, port),
                            "start the broker, or correct mqtt.host/mqtt.port"))
        return
    checks.append(Check("tcp", OK, "connected to %s port %d" % (address, port)))
    sock: socket.socket = raw
    try:
        if t.tls_on:
            tls_sock = _handshake(t, raw, checks, max_tls)
            if tls_sock is None:
                return
            sock = tls_sock
        _mqtt_connect(t, sock, checks)
    finally:
        sock.close()
        raw.close()


def _tls_config(t: Target) -> TLSConfig:
    assert t.ca_file is not None
    return TLSConfig(ca_file=t.ca_file, cert_file=t.cert_file, key_file=t.key_file, key_password=t.password,
                     key_password_source=t.password_source, min_version=t.min_version,
                     verify_hostname=t.verify_hostname, alpn=t.alpn, server_name=t.server_name)


def _handshake(t: Target, raw: socket.socket, checks: List[Check],
               max_tls: Optional[ssl.TLSVersion]) -> Optional[ssl.SSLSocket]:
    assert t.host is not None
    try:
        ctx = tls.build_context(_tls_config(t))
    except tls.TLSSetupError as exc:
        checks.append(Check("tls handshake", SKIPPED, str(exc)))
        return None
    if max_tls is not None:
        ctx.maximum_version = max_tls
    try:
        sock = ctx.wrap_socket(raw, server_hostname=t.host)
    except ssl.SSLCertVerificationError as exc:
        detail = tls.describe_failure(exc, t.host, t.port)
        peek = _peek_broker_certificate(t, max_tls)
        checks.append(Check("tls handshake", PROBLEM, detail + ("; " + peek if peek else ""),
                            _verify_fix(exc)))
        return None
    except ssl.SSLError as exc:
        detail = tls.describe_failure(exc, t.host, t.port)
        checks.append(Check("tls handshake", PROBLEM, detail,
                            _refusal_fix(t, detail) or "see docs/troubleshooting.md (raw error: %s)" % exc))
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


def _peek_broker_certificate(t: Target, max_tls: Optional[ssl.TLSVersion]) -> str:
    """The broker's certificate, fetched without verification, only to describe it."""
    assert t.host is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_tls is not None:
        ctx.maximum_version = max_tls
    if t.cert_file is not None and t.key_file is not None:
        try:  # under TLS 1.2 a broker that requires a client certificate ends the handshake without one
            ctx.load_cert_chain(str(t.cert_file), str(t.key_file), password=lambda: t.password or "")
        except (ssl.SSLError, OSError):
            pass
    try:
        with socket.create_connection((t.host, t.port), timeout=TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname=t.host) as sock:
            der = sock.getpeercert(binary_form=True)
    except OSError:
        return ""
    if not der or not _crypto():
        return ""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    sans: List[str] = []
    try:
        for name in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value:
            sans.append("%s:%s" % ("IP" if isinstance(name, x509.IPAddress) else "DNS", name.value))
    except x509.ExtensionNotFound:
        pass
    usages = _usages(cert)
    start, end = _cert_dates(cert)
    return ("the broker's certificate: subject %s, SANs %s, issuer %s, valid %s to %s, extendedKeyUsage %s"
            % (cert.subject.rfc4514_string(), ", ".join(sans) or "none", cert.issuer.rfc4514_string(),
               _fmt(start), _fmt(end), ", ".join(_oid_name(u) for u in usages) if usages is not None else "any"))


def _cert_dates(cert: Any) -> Tuple[datetime.datetime, datetime.datetime]:
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return cert.not_valid_before.replace(tzinfo=UTC), cert.not_valid_after.replace(tzinfo=UTC)


def _varint(size: int) -> bytes:
    out = b""
    while True:
        byte, size = size % 128, size // 128
        out += bytes([byte | (0x80 if size else 0)])
        if not size:
            return out


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def _connect_packet(client_id: str, keepalive: int, protocol: str = "3.1.1",
                    username: Optional[str] = None) -> bytes:
    """CONNECT with a clean session/start and no Last Will; MQTT 5's with no properties."""
    flags = 0x02 | (0x80 if username is not None else 0)
    v5 = protocol == "5"
    body = (b"\x00\x04MQTT" + bytes([5 if v5 else 4, flags]) + keepalive.to_bytes(2, "big")
            + (b"\x00" if v5 else b"") + _string(client_id) + (_string(username) if username is not None else b""))
    return b"\x10" + _varint(len(body)) + body


# CONNACK property identifiers and how long their values are (MQTT 5, section 3.2.2.3):
# -1 a UTF-8 string or binary data, -2 a string pair, else a fixed size in bytes.
_CONNACK_PROPERTIES = {0x11: 4, 0x12: -1, 0x13: 2, 0x15: -1, 0x16: -1, 0x1A: -1, 0x1C: -1, 0x1F: -1,
                       0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x26: -2, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1}
REASON_STRING = 0x1F


def _reason_string(properties: bytes) -> Optional[str]:
    """The ReasonString among a CONNACK's properties; None if absent or the block is not understood."""
    i = 0
    while i < len(properties):
        ident = properties[i]
        size = _CONNACK_PROPERTIES.get(ident)
        i += 1
        if size is None:
            return None
        if size > 0:
            i += size
            continue
        for _ in range(-size):
            length = int.from_bytes(properties[i:i + 2], "big")
            if ident == REASON_STRING:
                return properties[i + 2:i + 2 + length].decode("utf-8", errors="replace")
            i += 2 + length
    return None


def _read_packet(sock: socket.socket) -> bytes:
    """One MQTT packet (its fixed header included), or what arrived before the connection closed."""
    data = b""

    def more(count: int) -> bool:
        nonlocal data
        want = len(data) + count
        while len(data) < want:
            chunk = sock.recv(want - len(data))
            if not chunk:
                return False
            data += chunk
        return True

    if not more(1):
        return data
    remaining, shift = 0, 0
    while True:
        if not more(1):
            return data
        remaining |= (data[-1] & 0x7F) << shift
        shift += 7
        if not data[-1] & 0x80 or shift > 21:
            break
    more(remaining)
    return data


_REVOKED = tls.describe_alert("certificate revoked")


def _refusal_fix(t: Target, detail: str) -> str:
    if detail == _REVOKED:
        return ("issue this device a new certificate ('edison-agent pki issue-device --force DIR %s', or "
                "'pki renew DIR %s') and install it as %s; the revoked one stays refused"
                % (t.client_id, t.client_id, t.cert_file))
    return ""


def _refusal_under_tls12(t: Target) -> Optional[str]:
    """Why the broker refused us, asked again over TLS 1.2, or None.

    Under TLS 1.3 a broker judges the client certificate after the client's handshake has
    returned; its alert races our CONNECT, and when the broker closes with the CONNECT unread
    the reset can discard the alert. Under TLS 1.2 the alert ends the handshake itself."""
    assert t.host is not None
    try:
        ctx = tls.build_context(_tls_config(t))
    except tls.TLSSetupError:
        return None
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with socket.create_connection((t.host, t.port), timeout=TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname=t.host):
            return None
    except ssl.SSLError as exc:
        # Only a verdict on our certificate: a broker requiring TLS 1.3 answers this probe with
        # "protocol version", which says nothing about the close being explained.
        verdict = tls.describe_alert(str(exc))
        return verdict if verdict in tls.CLIENT_CERT_REFUSALS else None
    except OSError:
        return None


def _why_closed(t: Target, tls13: bool, closed: str) -> str:
    return (_refusal_under_tls12(t) if tls13 else None) or closed


def _mqtt_connect(t: Target, sock: socket.socket, checks: List[Check]) -> None:
    closed = tls.REJECTED_AFTER_HANDSHAKE if t.tls_on else "broker closed the connection before CONNACK"
    fix = "check the broker's log: does its cafile hold the CA that signed %s?" % t.cert_file
    v5 = t.protocol == "5"
    tls13 = isinstance(sock, ssl.SSLSocket) and sock.version() == "TLSv1.3"
    try:
        sock.settimeout(TIMEOUT)
        sock.sendall(_connect_packet(t.client_id, t.keepalive, t.protocol, t.username))
        reply = _read_packet(sock)
    except socket.timeout:
        checks.append(Check("mqtt connect", PROBLEM, "no CONNACK within %g s" % TIMEOUT,
                            "is this port an MQTT listener? check the broker's log"))
        return
    except ssl.SSLError as exc:
        detail = tls.describe_alert(str(exc)) or _why_closed(t, tls13, closed)
        checks.append(Check("mqtt connect", PROBLEM, detail, _refusal_fix(t, detail) or fix))
        return
    except OSError as exc:
        detail = _why_closed(t, tls13, closed)
        if detail == closed:
            detail = "%s (%s)" % (closed, exc.strerror or exc)
        checks.append(Check("mqtt connect", PROBLEM, detail, _refusal_fix(t, detail) or fix))
        return
    if len(reply) < 4:
        detail = _why_closed(t, tls13, closed)
        checks.append(Check("mqtt connect", PROBLEM, detail, _refusal_fix(t, detail) or fix))
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
        reason = _reason_string(rest[length_bytes:])
    if code != 0:
        if v5:
            detail = "broker refused the connection (MQTT 5 CONNACK %s)" % tls.describe_reason_code(code, reason)
            if code == 0x84:
                fix = "set mqtt.protocol: \"3.1.1\" (the broker speaks MQTT 3.1.1 only)"
            else:
                fix = "check the broker's ACL/policy for client id %r" % t.client_id
            checks.append(Check("mqtt connect", PROBLEM, detail, fix))
        else:
            checks.append(Check("mqtt connect", PROBLEM, tls.describe_connack(code),
                                "check the broker's ACL/policy for client id %r" % t.client_id))
        return
    try:
        sock.sendall(b"\xe0\x00")  # DISCONNECT: no Last Will
    except OSError:
        pass
    checks.append(Check("mqtt connect", OK, "CONNACK accepted client id %r%s" % (
        t.client_id, " (MQTT 5, %s)" % tls.describe_reason_code(code, reason) if v5 else "")))


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
