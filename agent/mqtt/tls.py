"""The SSLContext for the broker session, and TLS failures in plain words."""

from __future__ import annotations

import datetime
import logging
import re
import socket
import ssl
from typing import Any, Callable, Optional, Tuple

from agent.config.schema import KEY_PASSWORD_ENV, TLSConfig
from agent.mqtt import paho_shim

log = logging.getLogger(__name__)


class TLSSetupError(Exception):
    """A local TLS problem that waiting cannot heal: names the config key it came from."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__("%s: %s" % (key, message))
        self.key = key
        self.message = message


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
                            % (cfg.ca_file, _reason(exc))) from None
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
                            % (cfg.key_file, _reason(exc))) from None
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
                            "copy the file again" % (path, _reason(exc))) from None


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


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason).replace("_", " ").lower() if reason else str(exc)


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


_ALERTS = {
    "certificate required": "the broker requires a client certificate and none was sent: "
                            "set mqtt.tls.cert_file and mqtt.tls.key_file",
    "unknown ca": "the broker does not trust our client certificate: it was signed by a CA "
                  "the broker's cafile does not hold",
    # A broker whose crlfile is past its nextUpdate sends this alert for every device.
    "certificate expired": "the broker rejected our client certificate as expired (or the clock is wrong, or "
                           "the broker's CRL is past its nextUpdate: 'edison-agent pki crl DIR')",
    # OpenSSL's alert 44, sent by a broker with a crlfile that lists our serial.
    "certificate revoked": "the broker says this device's certificate is revoked (it is on the CA's revocation "
                           "list): issue a new one ('edison-agent pki issue-device --force DIR NAME') and install it",
    "bad certificate": "the broker rejected our client certificate",
    "certificate unknown": "the broker rejected our client certificate",
    "handshake failure": "the broker refused the TLS handshake (no common TLS version or cipher, or "
                         "it wanted a client certificate)",
    "protocol version": "the broker and this client share no TLS version (this client speaks TLS 1.2 or "
                        "newer, as far as its OpenSSL allows): set tls_version tlsv1.2 on the broker, or give "
                        "the board an OpenSSL with TLS 1.3 if the broker requires it",
    "unsupported certificate": "the broker rejected our client certificate as not meant for this use: "
                               "it lacks extendedKeyUsage clientAuth; issue it with 'edison-agent pki "
                               "issue-device'",
    "wrong version number": "the port answered but not with TLS: is it the plain MQTT port (1883), or another "
                            "service? mqtt.port should be the broker's TLS listener (8883)",
}


# What the broker's alerts say about our own certificate (as opposed to the TLS setup).
CLIENT_CERT_REFUSALS = frozenset(_ALERTS[a] for a in ("certificate required", "unknown ca", "certificate expired",
                                                       "certificate revoked", "bad certificate",
                                                       "certificate unknown"))


# What the broker's side says when it closes the connection right after the handshake: with TLS 1.3
# a refused client certificate shows up only as this close (session.py has the same words).
REJECTED_AFTER_HANDSHAKE = ("broker closed the connection after the TLS handshake: it probably rejected the "
                            "client certificate (unknown CA, revoked, or none sent)")

# What CONNACK 4/5 (MQTT 5: 0x86/0x87) mean on the brokers the agent meets, not only Mosquitto's words.
NO_SUCH_USER = ("with a client certificate the user name is usually the certificate's CN: create that user on the "
                "broker (Mosquitto: use_identity_as_username true on the listener; RabbitMQ: mqtt.ssl_cert_login = "
                "true and ssl_cert_login_from = common_name, then 'rabbitmqctl add_user CN' and 'set_permissions'; "
                "EMQX: mqtt.peer_cert_as_username = cn and a user for it; AWS IoT: no user name, the certificate "
                "must be ACTIVE), or mqtt.username / mqtt.password_file are not what the broker has")
NOT_AUTHORIZED = ("the broker's ACL or policy does not allow this identity (Mosquitto: acl_file, whose user is the "
                  "certificate's CN with use_identity_as_username; RabbitMQ: the CN user's permissions on the vhost, "
                  "'rabbitmqctl set_permissions'; EMQX: authorization rules for the CN; AWS IoT: the policy attached "
                  "to the certificate must allow iot:Connect for this client id)")

# MQTT 3.1.1 CONNACK return codes (section 3.2.2.3).
_CONNACK = {
    1: "unacceptable protocol version: the broker does not speak MQTT 3.1.1",
    2: "identifier rejected: the broker does not accept mqtt.client_id (too long, bad characters, "
       "or not allowed for this certificate)",
    3: "server unavailable: the broker is up but not accepting connections",
    4: "bad user name or password: " + NO_SUCH_USER,
    5: "not authorized: " + NOT_AUTHORIZED,
}


def describe_connack(return_code: int) -> str:
    """A refused CONNACK in plain words."""
    return "broker refused the connection (CONNACK %d): %s" % (
        return_code, _CONNACK.get(return_code, "reserved return code"))


# MQTT 5 reason codes a broker gives in CONNACK or DISCONNECT (section 2.4), in plain words.
_REASON_CODES = {
    0x00: "success",
    0x04: "the broker asked us to send our Last Will",
    0x80: "unspecified error",
    0x81: "malformed packet: the broker could not parse what we sent",
    0x82: "protocol error",
    0x83: "implementation-specific error: see the broker's log",
    0x84: "unsupported protocol version: the broker does not speak MQTT 5; set mqtt.protocol: \"3.1.1\"",
    0x85: "client identifier not valid: the broker does not accept mqtt.client_id",
    0x86: "bad user name or password: " + NO_SUCH_USER,
    0x87: "not authorized: " + NOT_AUTHORIZED,
    0x88: "server unavailable",
    0x89: "server busy: try again later",
    0x8A: "banned: this client is banned by the broker's administrator",
    0x8B: "the server is shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout: the broker heard nothing for 1.5 x mqtt.keepalive",
    0x8E: "session taken over: another client connected with the same client id",
    0x90: "topic name invalid: the broker does not accept mqtt.topic or mqtt.status_topic",
    0x93: "receive maximum exceeded: lower mqtt.inflight",
    0x95: "packet too large: lower batch.max_readings",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action: an administrator disconnected this client",
    0x99: "payload format invalid",
    0x9A: "retain not supported by this broker",
    0x9B: "QoS not supported by this broker: lower mqtt.qos",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9F: "connection rate exceeded: too many connects; the backoff will slow them",
}


def describe_reason_code(code: int, reason_string: Optional[str] = None) -> str:
    """An MQTT 5 reason code as `reason code 135 (0x87), <meaning>[, broker says '...']`."""
    text = "reason code %d (0x%02X), %s" % (code, code, _REASON_CODES.get(code, "see the MQTT 5 specification"))
    if reason_string:
        text += ", broker says %r" % reason_string
    return text


def describe_failure(exc: BaseException, host: str, port: Optional[int] = None) -> str:
    """Turns a connect() failure into one line a person can act on.

    Shared by the daemon's connect-failure log lines and `edison-agent doctor`."""
    where = "%s:%d" % (host, port) if port is not None else host
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or _reason(exc)
        if "Hostname mismatch" in message or "IP address mismatch" in message:
            return ("the broker's certificate is not valid for %r (%s): connect by a name in its "
                    "subjectAltName, or issue it for this name" % (host, message))
        if "unable to get local issuer" in message or "self-signed" in message or "self signed" in message:
            return "the broker's certificate was not signed by the CA in mqtt.tls.ca_file (%s)" % message
        if "expired" in message or "not yet valid" in message:
            return "the broker's certificate is %s (check the clock)" % message
        if "unsupported certificate purpose" in message:
            return ("the broker's certificate is not a server certificate (%s): it lacks extendedKeyUsage "
                    "serverAuth; issue it with 'edison-agent pki issue-broker'" % message)
        return "the broker's certificate failed verification: %s" % message
    if isinstance(exc, (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        # A port that speaks plain MQTT reads the ClientHello as a malformed packet and drops the
        # connection: OpenSSL sees a reset (or an EOF) in the middle of its handshake.
        return ("%s answered but not with TLS: is it the plain MQTT port (1883)? The connection was %s during "
                "the TLS handshake; mqtt.port should be the broker's TLS listener (8883)"
                % (where, "reset" if isinstance(exc, ConnectionResetError) else "closed"))
    if isinstance(exc, ssl.SSLError):
        return describe_alert(str(exc)) or "TLS handshake failed: %s" % _reason(exc)
    if isinstance(exc, socket.gaierror):
        return ("DNS failure: cannot resolve %r (%s): check mqtt.host and the board's DNS (/etc/resolv.conf)"
                % (host, exc.strerror or exc))
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused by %s: is the broker running and listening on this port?" % where
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return ("timed out connecting to %s: the broker or the network does not answer (firewall, wrong "
                "address, or no route)" % where)
    if isinstance(exc, OSError) and exc.strerror:
        return "%s (connecting to %s)" % (exc.strerror, where)
    return str(exc) or type(exc).__name__


def describe_alert(text: str) -> Optional[str]:
    lowered = re.sub(r"[_\s]+", " ", text.lower())
    for alert, meaning in _ALERTS.items():
        if alert in lowered:
            return meaning
    return None
