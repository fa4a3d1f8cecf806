"""`edison-agent doctor`'s findings and its offline checks: the TLS files, keys, passphrase,
dates, key usage and chain, before any connection is tried."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

from agent.config.sections import KEY_PASSWORD_ENV, MQTTConfig, TLSConfig
from agent.mqtt import tls

OK, PROBLEM, WARNING, SKIPPED = "ok", "problem", "warning", "skipped"
EXPIRY_WARNING_DAYS = 30
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
    """What the doctor checks: the mqtt section as the loader read it (`mqtt`, None without a broker),
    the broker it talks to now (one of mqtt.hosts), and the key's passphrase as it read it itself."""
    config_path: Path
    mqtt: Optional[MQTTConfig] = None
    # mqtt.tls is written, even when it could not be read (no ca_file): TLS stays on.
    tls_on: bool = False
    host: Optional[str] = None
    port: int = 0
    password: Optional[str] = None
    password_source: Optional[str] = None

    @property
    def tls(self) -> Optional[TLSConfig]:
        return self.mqtt.tls if self.mqtt is not None else None

    @property
    def ca_file(self) -> Optional[Path]:
        return self.tls.ca_file if self.tls is not None else None

    @property
    def cert_file(self) -> Optional[Path]:
        return self.tls.cert_file if self.tls is not None else None

    @property
    def key_file(self) -> Optional[Path]:
        return self.tls.key_file if self.tls is not None else None

    @property
    def password_file(self) -> Optional[Path]:
        return self.tls.key_password_file if self.tls is not None else None

    @property
    def verify_hostname(self) -> bool:
        return self.tls is None or self.tls.verify_hostname

    @property
    def alpn(self) -> Tuple[str, ...]:
        return self.tls.alpn if self.tls is not None else ()

    def _mqtt(self) -> MQTTConfig:
        assert self.mqtt is not None, "no broker to talk to"
        return self.mqtt

    @property
    def client_id(self) -> str:
        return self._mqtt().client_id

    @property
    def keepalive(self) -> int:
        return self._mqtt().keepalive

    @property
    def protocol(self) -> str:
        return self._mqtt().protocol

    @property
    def username(self) -> Optional[str]:
        # It may come from a template or a target's default: the loader's reading is the one sent.
        return self._mqtt().username

    @property
    def mqtt_password(self) -> Optional[str]:
        return self._mqtt().password

    @property
    def hosts(self) -> Tuple[Tuple[str, int], ...]:
        return self.mqtt.hosts if self.mqtt is not None else ()

    @property
    def topics(self) -> Tuple[Tuple[str, str], ...]:
        """(what, topic) for each topic the agent publishes to: status, telemetry, health."""
        m = self._mqtt()
        return tuple((what, topic) for what, topic in (
            ("status", m.status_topic), ("telemetry", m.topic), ("health", m.health_topic)) if topic)


def offline_checks(t: Target, checks: List[Check], now: datetime.datetime) -> bool:
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


def fmt_date(moment: datetime.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _date_check(what: str, path: Path, checks: List[Check], now: datetime.datetime) -> None:
    dates = tls.certificate_dates(str(path))
    name = "%s dates" % what
    if dates is None:
        checks.append(Check(name, PROBLEM, "%s is not a PEM certificate" % path,
                            "point the setting at the .crt file"))
        return
    start, end = dates
    valid = "valid %s to %s; this board's clock reads %s" % (fmt_date(start), fmt_date(end), fmt_date(now))
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
        checks.append(Check(name, status, "%s expires %s (%d days left)" % (path, fmt_date(end), days),
                            "renew it soon" if status == WARNING else ""))


def crypto_available() -> bool:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


def _client_usage_check(cert_file: Path, checks: List[Check]) -> None:
    if not crypto_available():
        checks.append(Check("client certificate usage", SKIPPED, "needs the 'cryptography' package"))
        return
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except ValueError:
        return  # the dates check has said it is not a certificate
    usages = key_usages(cert)
    if usages is not None and not ({ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
                                   & set(usages)):
        checks.append(Check("client certificate usage", PROBLEM, "%s lacks extendedKeyUsage clientAuth (it has: "
                            "%s): brokers refuse it" % (cert_file, ", ".join(oid_name(u) for u in usages)),
                            "issue a client certificate: 'edison-agent pki issue-device DIR NAME'"))
    else:
        checks.append(Check("client certificate usage", OK, "%s is valid for clientAuth" % cert_file))


def key_usages(cert: Any) -> Optional[List[Any]]:
    from cryptography import x509

    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None  # no extension: any use


def oid_name(oid: Any) -> str:
    return str(getattr(oid, "_name", None) or oid.dotted_string)


def _chain_check(cert_file: Path, ca_file: Path, checks: List[Check]) -> None:
    if not crypto_available():
        checks.append(Check("client certificate issuer", SKIPPED, "needs the 'cryptography' package"))
        return
    from cryptography import x509

    # Both arrived in cryptography 39/40; Debian 12 (bookworm) ships 38, and the pki extra allows 3.4.
    if not hasattr(x509, "load_pem_x509_certificates") or not hasattr(x509.Certificate, "verify_directly_issued_by"):
        checks.append(Check("client certificate issuer", SKIPPED, "needs cryptography 40 or newer"))
        return
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


def cert_dates(cert: Any) -> Tuple[datetime.datetime, datetime.datetime]:
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return cert.not_valid_before.replace(tzinfo=UTC), cert.not_valid_after.replace(tzinfo=UTC)


def certificate_cn(path: Path) -> Optional[str]:
    """The subject CN of the certificate at `path`: the user name brokers take from it. None if unknown."""
    if not crypto_available():
        return None
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except (OSError, ValueError):
        return None
    return str(names[0].value) if names else None


def peek_broker_certificate(t: Target) -> str:
    """The broker's certificate, fetched without verification, only to describe it."""
    assert t.host is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if t.cert_file is not None and t.key_file is not None:
        try:  # under TLS 1.2 a broker that requires a client certificate ends the handshake without one
            ctx.load_cert_chain(str(t.cert_file), str(t.key_file), password=lambda: t.password or "")
        except (ssl.SSLError, OSError):
            pass
    try:
        with socket.create_connection((t.host, t.port), timeout=10.0) as raw, \
                ctx.wrap_socket(raw, server_hostname=t.host) as sock:
            der = sock.getpeercert(binary_form=True)
    except OSError:
        return ""
    if not der or not crypto_available():
        return ""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    sans: List[str] = []
    try:
        for name in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value:
            sans.append("%s:%s" % ("IP" if isinstance(name, x509.IPAddress) else "DNS", name.value))
    except x509.ExtensionNotFound:
        pass
    usages = key_usages(cert)
    start, end = cert_dates(cert)
    return ("the broker's certificate: subject %s, SANs %s, issuer %s, valid %s to %s, extendedKeyUsage %s"
            % (cert.subject.rfc4514_string(), ", ".join(sans) or "none", cert.issuer.rfc4514_string(),
               fmt_date(start), fmt_date(end), ", ".join(oid_name(u) for u in usages) if usages is not None else "any"))
