"""The SSLContext for the broker session, and a certificate's dates."""

from __future__ import annotations

import datetime
import logging
import re
import ssl
from typing import Any, Callable, Optional, Tuple

from agent.config.schema import KEY_PASSWORD_ENV, TLSConfig
from agent.mqtt import paho_shim
from agent.mqtt.problems import TLSSetupError, openssl_reason

log = logging.getLogger(__name__)


class ClientContext(ssl.SSLContext):
    """The session's context. paho wraps its sockets itself, so two things happen here:

    - TLS session resumption: paho never passes `session=`; a reconnect that offers the saved
      session skips the certificate exchange and its signatures (the expensive part on a
      500 MHz Atom). The session saves it after CONNACK, when a TLS 1.3 ticket has arrived.
    - When a handshake fails paho leaves the half-open socket to the garbage collector; this
      keeps a hand on the last one so the session can close it at once.
    - paho sends its host as the SNI and checks the certificate against it; `server_name`
      (mqtt.tls.server_name) replaces it for both, for a broker reached by an address or
      through a port-forward.
    """

    _last_socket: Optional[ssl.SSLSocket] = None
    resume: Optional[ssl.SSLSession] = None
    server_name: Optional[str] = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.resume is not None and kwargs.get("session") is None:
            kwargs["session"] = self.resume
        if self.server_name is not None:
            kwargs["server_hostname"] = self.server_name
        sock = super().wrap_socket(*args, **kwargs)
        self._last_socket = sock
        return sock

    def remember_session(self, sock: ssl.SSLSocket) -> None:
        self.resume = sock.session

    def discard_last_socket(self) -> None:
        sock, self._last_socket = self._last_socket, None
        if sock is not None:
            sock.close()


def _password_callback(cfg: TLSConfig) -> Callable[[], str]:
    # OpenSSL prompts on the terminal when a key is encrypted and no password is given
    # (and fails with a bare EINVAL without one, as under systemd). A callable that
    # raises turns both into one clear error.
    def password() -> str:
        if cfg.key_password is None:
            raise TLSSetupError("mqtt.tls.key_file", "%s is encrypted but no passphrase is configured: set "
                                "mqtt.tls.key_password_file or %s" % (cfg.key_file, KEY_PASSWORD_ENV))
        return cfg.key_password

    return password


def build_context(cfg: TLSConfig) -> ssl.SSLContext:
    """Verification and hostname checks on unless the config says otherwise; TLS 1.2 at least."""
    # What ssl.create_default_context(SERVER_AUTH) sets up, on our subclass: PROTOCOL_TLS_CLIENT
    # means certificate verification and hostname checks on, and the secure default ciphers.
    # Unlike create_default_context on Python 3.13, no VERIFY_X509_STRICT: it rejects the
    # version-1 certificates `openssl x509 -req` makes (the founding post's commands), while
    # OpenSSL's chain, signature and date checks stay on.
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=str(cfg.ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError("mqtt.tls.ca_file", "%s holds no usable PEM CA certificate (%s)"
                            % (cfg.ca_file, openssl_reason(exc))) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if cfg.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    if not cfg.verify_hostname:
        ctx.check_hostname = False
        log.warning("mqtt.tls.verify_hostname is false: the broker's certificate is not checked against "
                    "its host name, so any holder of a certificate from this CA can impersonate it")
    if cfg.cert_file is not None and cfg.key_file is not None:
        _load_client_certificate(ctx, cfg)
    if cfg.alpn:
        ctx.set_alpn_protocols(list(cfg.alpn))
    ctx.server_name = cfg.server_name
    return ctx


def _load_client_certificate(ctx: ssl.SSLContext, cfg: TLSConfig) -> None:
    # load_cert_chain says "PEM lib" for a damaged certificate, a damaged key and a wrong passphrase
    # alike: each file is checked on its own first, so the message names the one at fault.
    _check_certificate_file(str(cfg.cert_file))
    encrypted = _check_key_file(str(cfg.key_file))
    try:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file), password=_password_callback(cfg))
    except TLSSetupError:
        raise
    except ssl.SSLError as exc:
        text = str(exc)
        if "KEY_VALUES_MISMATCH" in text:
            raise TLSSetupError("mqtt.tls.key_file", "%s is not the private key of %s (mqtt.tls.cert_file)"
                                % (cfg.key_file, cfg.cert_file)) from None
        if cfg.key_password is not None and encrypted:
            raise TLSSetupError("mqtt.tls.key_password_file", "wrong passphrase for %s (passphrase from %s)"
                                % (cfg.key_file, cfg.key_password_source)) from None
        # The certificate loaded on its own (above): what failed is the key.
        raise TLSSetupError("mqtt.tls.key_file", "%s holds no usable private key (damaged, or not PEM?): %s"
                            % (cfg.key_file, openssl_reason(exc))) from None
    except OSError as exc:
        raise TLSSetupError("mqtt.tls.key_file", "cannot load %s: %s" % (cfg.key_file, exc)) from None


def _check_certificate_file(path: str) -> None:
    """A PEM certificate that OpenSSL parses, or TLSSetupError naming mqtt.tls.cert_file."""
    text = _head(path, "mqtt.tls.cert_file")
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise TLSSetupError("mqtt.tls.cert_file", "%s holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' "
                            "line)" % path)
    if b"-----END CERTIFICATE-----" not in text:
        raise TLSSetupError("mqtt.tls.cert_file", "%s is truncated: its certificate has no '-----END "
                            "CERTIFICATE-----' line; copy the file again" % path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError("mqtt.tls.cert_file", "%s holds no usable certificate (damaged or truncated: %s); "
                            "copy the file again" % (path, openssl_reason(exc))) from None


def _check_key_file(path: str) -> bool:
    """Whether the key is encrypted; TLSSetupError naming mqtt.tls.key_file when it is cut short."""
    text = _head(path, "mqtt.tls.key_file")
    begin = re.search(rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----", text)
    if begin is None:
        raise TLSSetupError("mqtt.tls.key_file", "%s holds no PEM private key (no '-----BEGIN ... PRIVATE "
                            "KEY-----' line)" % path)
    if b"-----END " + begin.group(1) + b"-----" not in text:
        raise TLSSetupError("mqtt.tls.key_file", "%s is truncated: its key has no '-----END %s-----' line; copy "
                            "the file again" % (path, begin.group(1).decode("ascii")))
    return b"ENCRYPTED" in text


def _head(path: str, key: str) -> bytes:
    # Certificates and keys are a few KB; a chain of several is rarely past 64 KB.
    try:
        with open(path, "rb") as f:
            return f.read(1024 * 1024)
    except OSError as exc:
        raise TLSSetupError(key, "cannot read %s: %s" % (path, exc.strerror or exc)) from None


def certificate_dates(path: str) -> Optional[Tuple[datetime.datetime, datetime.datetime]]:
    """notBefore/notAfter of a PEM certificate, without needing `cryptography` on the board."""
    decoded = paho_shim.decode_certificate(path)
    if decoded is None:
        return None
    try:
        return parse_cert_time(decoded["notBefore"]), parse_cert_time(decoded["notAfter"])
    except (KeyError, ValueError, TypeError):
        return None


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# OpenSSL's ASN1_TIME_print: "Jan  1 00:00:00 2050 GMT"; a GeneralizedTime may carry fractions.
_CERT_TIME = re.compile(r"^([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(?:\.\d+)? (\d{4}) GMT$")


def parse_cert_time(text: str) -> datetime.datetime:
    """An aware UTC datetime from the ssl module's notBefore/notAfter text.

    By hand, never through the platform's time_t: on a 32-bit board (the Edison) a time_t ends
    on 19 January 2038, and datetime.fromtimestamp() of a later notAfter raises OverflowError,
    which stopped `run` and `doctor` for any certificate issued for more than about 12 years.
    Month names are matched here, not by strptime, so the locale cannot change them."""
    match = _CERT_TIME.match(text)
    if match is None or match.group(1) not in _MONTHS:
        raise ValueError("not a certificate time: %r" % text)
    month, day, hour, minute, second, year = match.groups()
    return datetime.datetime(int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second),
                             tzinfo=datetime.timezone.utc)


def check_validity(not_before: datetime.datetime, not_after: datetime.datetime,
                   now: Optional[datetime.datetime] = None) -> Optional[str]:
    """A plain-language problem with a certificate's dates, or None."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now < not_before:
        hint = ""
        if now.year < 2020:
            hint = " (this clock reads %d: the Edison has no battery-backed clock; wait for time sync)" % now.year
        return "not valid until %s UTC%s" % (not_before.strftime("%Y-%m-%d %H:%M"), hint)
    if now > not_after:
        return "expired on %s UTC" % not_after.strftime("%Y-%m-%d %H:%M")
    return None
