"""What goes wrong between the agent and its broker, as types, with the words a person can act on.

The MQTT reason-code tables (CONNACK's 3.1.1 return codes, MQTT 5's reason codes) and the TLS
alerts a broker sends, in plain words; `describe_*` give the line (the daemon's log and
`edison-agent doctor` say the same words). The session keeps why it is not connected as one of
the `SessionProblem` types below, and decides whether that changed with `same_state`, never by
comparing texts: a broker down for an hour is one log line, not one per retry.
"""

from __future__ import annotations

import re
import socket
import ssl
from typing import Any, Dict, Optional

from agent.errors import AgentError, BrokerRefusal, CertificateError


class TLSSetupError(CertificateError):
    """A local TLS problem that waiting cannot heal (a CA, certificate or key file, a passphrase):
    names the config key it came from."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__("%s: %s" % (key, message))
        self.key = key
        self.message = message


def openssl_reason(exc: BaseException) -> str:
    """OpenSSL's reason for an ssl error, in lower case words (CERTIFICATE_VERIFY_FAILED -> ...)."""
    reason = getattr(exc, "reason", None)
    return str(reason).replace("_", " ").lower() if reason else str(exc)


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
_CLIENT_CERT_ALERTS = frozenset(("certificate required", "unknown ca", "certificate expired", "certificate revoked",
                                 "bad certificate", "certificate unknown"))
CLIENT_CERT_REFUSALS = frozenset(_ALERTS[a] for a in _CLIENT_CERT_ALERTS)


# What the broker's side says when it closes the connection right after the handshake: with TLS 1.3
# a refused client certificate shows up only as this close (agent/tools/doctor says the same words).
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
        message = exc.verify_message or openssl_reason(exc)
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
        return describe_alert(str(exc)) or "TLS handshake failed: %s" % openssl_reason(exc)
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
    """A TLS alert named in `text`, in plain words; None when it names none."""
    alert = alert_of(text)
    return _ALERTS[alert] if alert is not None else None


# paho 2 hands an MQTT 3.1.1 CONNACK's return code over as the MQTT 5 reason code it maps it to.
_CONNACK_CODES = {0x84: 1, 0x85: 2, 0x88: 3, 0x86: 4, 0x87: 5}


def _reason_string(properties: Any) -> Optional[str]:
    text = getattr(properties, "ReasonString", None)
    return str(text) if text else None


class SessionProblem(AgentError):
    """Why the session is not connected. `str()` is the line logged and shown in the health
    document; `fields` go beside it in the journal (TLS_ERROR, MQTT_RC)."""

    def __init__(self, line: str, fields: Optional[Dict[str, str]] = None) -> None:
        super().__init__(line)
        self.fields: Dict[str, str] = dict(fields or {})

    def same_state(self, previous: Optional["SessionProblem"]) -> bool:
        """Whether `previous` was this same trouble (then it is not logged again)."""
        return type(previous) is type(self) and previous is not None and previous.state == self.state

    @property
    def state(self) -> Any:
        """What tells this trouble from another of its kind; the kind alone by default."""
        return None


class ConnectFailed(SessionProblem):
    """connect() raised: DNS, TCP or the TLS handshake (describe_failure's words)."""

    def __init__(self, exc: BaseException, host: str) -> None:
        fields = {"TLS_ERROR": str(exc)} if isinstance(exc, ssl.SSLError) else {}
        super().__init__(describe_failure(exc, host), fields)
        # The host too: with mqtt.hosts, the same failure at the next broker is news.
        self._state = (host, type(exc).__name__, getattr(exc, "errno", None), alert_of(str(exc)))

    @property
    def state(self) -> Any:
        return self._state


class TLSAlert(SessionProblem):
    """The broker sent a TLS alert (after our handshake, or during it) that closed the connection."""

    def __init__(self, alert: str, raw: str) -> None:
        super().__init__(_ALERTS[alert], {"TLS_ERROR": raw})
        self.alert = alert

    @property
    def about_our_certificate(self) -> bool:
        return self.alert in _CLIENT_CERT_ALERTS

    @property
    def state(self) -> Any:
        return self.alert


class RejectedAfterHandshake(SessionProblem):
    """A close right after the TLS handshake: with TLS 1.3 a refused client certificate looks
    only like this."""

    def __init__(self, raw: Optional[str]) -> None:
        super().__init__(REJECTED_AFTER_HANDSHAKE, {"TLS_ERROR": raw or "closed"})

    def same_state(self, previous: Optional[SessionProblem]) -> bool:
        # The same refusal as the alert that sometimes precedes it (whether the alert is read
        # first is a race): not a new state.
        if isinstance(previous, TLSAlert) and previous.about_our_certificate:
            return True
        return super().same_state(previous)


class ClosedBeforeConnack(SessionProblem):
    """A plain-MQTT broker that closed without a CONNACK, or an MQTT 5 one that speaks 3.1.1 only."""

    def __init__(self, line: str, raw: Optional[str]) -> None:
        super().__init__(line, {"TLS_ERROR": raw or "closed"})


class ConnectRefused(SessionProblem):
    """CONNACK with a failure code. `code` is MQTT 5's reason code (paho maps 3.1.1's to it)."""

    def __init__(self, code: int, name: str, v5: bool, reason_string: Optional[str] = None) -> None:
        if v5:
            line = "broker refused the connection (%s): %s" % (describe_reason_code(code, reason_string), name)
        else:
            line = "%s: %s" % (describe_connack(_CONNACK_CODES.get(code, 0)), name)
        super().__init__(line, {"MQTT_RC": name})
        self.refusal = BrokerRefusal(line, code)

    @classmethod
    def from_paho(cls, reason_code: Any, properties: Any, v5: bool) -> "ConnectRefused":
        return cls(int(reason_code.value), str(reason_code), v5, _reason_string(properties))

    @property
    def code(self) -> int:
        return self.refusal.code

    @property
    def state(self) -> Any:
        return self.code


class ConnectionLost(SessionProblem):
    """An established connection ended; `cause` is the broker's DISCONNECT or paho's socket error."""

    def __init__(self, cause: Optional[str]) -> None:
        super().__init__("connection lost" + (": %s" % cause if cause else ""))


class BrokerDisconnect(BrokerRefusal):
    """An MQTT 5 broker's DISCONNECT packet: why it ends the connection, as its reason code."""

    def __init__(self, reason_code: Any, properties: Any) -> None:
        code = int(reason_code.value)
        super().__init__("broker sent DISCONNECT (%s): %s" % (
            describe_reason_code(code, _reason_string(properties)), reason_code), code)
        self.name = str(reason_code)


def alert_of(text: str) -> Optional[str]:
    """The TLS alert an OpenSSL or paho error text names, if any (the key of _ALERTS)."""
    lowered = re.sub(r"[_\s]+", " ", text.lower())
    for alert in _ALERTS:
        if alert in lowered:
            return alert
    return None
