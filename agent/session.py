"""The one MQTT session: the only module that touches paho.

One network thread owns the socket: it connects, runs paho's loop, reconnects with
exponential backoff and full jitter, and on stop publishes the offline status before
a clean DISCONNECT (which, by design, does not fire the Last Will).
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Set

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.config import MQTTConfig
from agent.tls import CLIENT_CERT_REFUSALS, REJECTED_AFTER_HANDSHAKE, ClientContext, describe_alert, describe_failure

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
# The network thread comes round at least this often when idle (the watchdog's evidence);
# more often only when keepalive asks for it.
ALIVE_STEP = 15.0


@dataclass(frozen=True)
class ConnectionInfo:
    tls_version: Optional[str]
    cipher: Optional[str]
    nodelay: bool
    resumed: bool = False

    def describe(self) -> str:
        if not self.tls_version:
            return "plain MQTT"
        return "%s %s%s" % (self.tls_version, self.cipher, ", resumed TLS session" if self.resumed else "")


def backoff_delay(attempt: int, min_delay: float, max_delay: float, rng: random.Random,
                  spread: Optional[float] = None) -> float:
    """Full jitter between min_delay and an exponential cap, so a fleet does not reconnect in step.

    `spread` is for the first attempt after an established connection was lost. A broker restart
    drops every board in the same instant, and a cap of 2 x min_delay would bring them all back
    within one second; that attempt is drawn from a window `spread` seconds wide instead (never
    beyond max_delay).
    """
    if spread is not None:
        cap = min(max_delay, min_delay + spread)
    else:
        cap = min(max_delay, min_delay * (2 ** min(attempt, 30)))
    return rng.uniform(min_delay, max(min_delay, cap))


class Session:
    def __init__(self, config: MQTTConfig, ssl_context: Optional[ssl.SSLContext],
                 on_io: Callable[[], None] = lambda: None, rng: Optional[random.Random] = None) -> None:
        self._config = config
        self._on_io = on_io
        self._rng = rng or random.Random()
        # Every line about this session carries BROKER= in the journal.
        self._log = logging.LoggerAdapter(log, {"BROKER": "%s:%d" % (config.host, config.port)})
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                                   clean_session=config.clean_session, protocol=mqtt.MQTTv311)
        self._ssl_context = ssl_context
        if ssl_context is not None:
            self._client.tls_set_context(ssl_context)
        self._client.will_set(config.status_topic, OFFLINE, qos=1, retain=True)
        self._client.max_inflight_messages_set(config.inflight)
        self._client.on_connect = self._handle_connect
        self._client.on_publish = self._handle_publish
        self._client.on_log = self._handle_log
        self._client.on_socket_open = _set_nodelay
        # With a write-registration hook set, publish() from the sampler thread only queues
        # the packet and wakes our select(); paho would otherwise write to the TLS socket
        # from that thread while the network thread reads it.
        self._client.on_socket_register_write = lambda client, userdata, sock: None
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._stop_deadline = 0.0
        self._offline_lock = threading.Lock()
        self._offline_published = False
        self._offline_acked = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-session", daemon=True)
        self._acks_lock = threading.Lock()
        self._acks: Dict[int, Callable[[], None]] = {}
        self._early_acks: Set[int] = set()
        self._refusal: Optional[str] = None
        self._socket_error: Optional[str] = None
        self._last_problem: Optional[str] = None
        self.connected_since: Optional[float] = None
        self.disconnected_since: Optional[float] = time.time()
        self.reconnects = 0
        # Monotonic time the network thread last came round its loop: the watchdog's evidence.
        self.last_alive = time.monotonic()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connection_info(self) -> Optional[ConnectionInfo]:
        """What the live connection negotiated; None while disconnected."""
        sock = self._client.socket()
        if not self.connected or not isinstance(sock, socket.socket):
            return None
        nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        if isinstance(sock, ssl.SSLSocket):
            cipher = sock.cipher()
            return ConnectionInfo(sock.version(), cipher[0] if cipher else None, nodelay, bool(sock.session_reused))
        return ConnectionInfo(None, None, nodelay)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        cfg = self._config
        self._log.info("connecting to %s:%d as %r (%s)", cfg.host, cfg.port, cfg.client_id,
                 "TLS %s+" % cfg.tls.min_version if cfg.tls else "plain MQTT, no TLS")
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Publish offline, disconnect, and wait for the network thread, all within `timeout`."""
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()
        # Publishing from this thread also wakes the network thread out of its select(),
        # so a stop does not wait for the loop's one-second timeout.
        self._publish_offline()
        self._thread.join(timeout + 1.0)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False,
                on_ack: Optional[Callable[[], None]] = None) -> bool:
        """False if paho did not take the message; `on_ack` runs on PUBACK (QoS 1) or when sent (QoS 0)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # QoS 1 messages stay in paho's store even when the connection is down (NO_CONN):
        # paho sends them again after the next CONNACK, so they are taken.
        taken = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN)
        if taken and on_ack is not None:
            with self._acks_lock:
                if info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                else:
                    self._acks[info.mid] = on_ack
                    on_ack = None
            if on_ack is not None:
                on_ack()
        return taken

    # -- paho callbacks (network thread) --------------------------------------------------

    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                        properties: Any) -> None:
        if reason_code.is_failure:
            self._refusal = "broker refused the connection: %s" % reason_code
            return
        self._refusal = None
        client.publish(self._config.status_topic, ONLINE, qos=1, retain=True)
        self.connected_since = time.time()
        self.disconnected_since = None
        self._connected.set()

    def _handle_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                        properties: Any) -> None:
        # PUBACK can arrive before publish() has returned the mid to its caller.
        with self._acks_lock:
            callback = self._acks.pop(mid, None)
            if callback is None:
                self._early_acks.add(mid)
        if callback is not None:
            callback()

    def _handle_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and "socket" in text:
            self._socket_error = text

    # -- the network thread ---------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            lost = self._connect_once()
            if lost:
                attempt = 0
            attempt += 1
            if self._stop.is_set():
                break
            rc = self._config.reconnect
            delay = backoff_delay(attempt, rc.min_delay, rc.max_delay, self._rng, spread=rc.spread if lost else None)
            self._log.debug("next connection attempt in %.1f s", delay)
            # In steps, so the watchdog sees this thread alive through a long backoff.
            deadline = time.monotonic() + delay
            while not self._stop.is_set() and time.monotonic() < deadline:
                self.last_alive = time.monotonic()
                self._stop.wait(min(ALIVE_STEP, deadline - time.monotonic()))

    def _connect_once(self) -> bool:
        """One connection's life; True if it reached CONNACK."""
        cfg = self._config
        self._forget_last_attempt()
        try:
            self._client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive)
        except (OSError, ValueError) as exc:
            if isinstance(self._ssl_context, ClientContext):
                self._ssl_context.discard_last_socket()
            tls_error = {"TLS_ERROR": str(exc)} if isinstance(exc, ssl.SSLError) else {}
            self._problem(describe_failure(exc, cfg.host), tls_error)
            return False
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        was_connected = False
        while not self._stop.is_set() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            # Idle, the thread only needs to wake for keepalive: a quarter of it keeps a ping
            # well inside the broker's 1.5 x keepalive, and ALIVE_STEP bounds it for the watchdog.
            rc = self._client.loop(timeout=min(ALIVE_STEP, cfg.keepalive / 4))
            self.last_alive = time.monotonic()
            if self._connected.is_set() and not was_connected:
                was_connected = True
                self._on_connected()
            self._on_io()
        if self._stop.is_set() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._go_offline()
            return was_connected
        self._connected.clear()
        if was_connected:
            self.disconnected_since = time.time()
            self._problem("connection lost" + (": %s" % self._socket_error if self._socket_error else ""))
        elif self._refusal is not None:
            self._problem(self._refusal, {"MQTT_RC": self._refusal.rpartition(": ")[2]})
        else:
            self._problem(self._closed_before_connack(), {"TLS_ERROR": self._socket_error or "closed"})
        self._client.disconnect()
        return was_connected

    def _forget_last_attempt(self) -> None:
        self._socket_error = None
        self._refusal = None

    def _closed_before_connack(self) -> str:
        alert = describe_alert(self._socket_error or "")
        if alert is not None:
            return alert
        if self._config.tls is not None:
            return REJECTED_AFTER_HANDSHAKE
        return "broker closed the connection before accepting it (%s)" % (self._socket_error or "no reason given")

    def _on_connected(self) -> None:
        cfg = self._config
        sock = self._client.socket()
        if isinstance(self._ssl_context, ClientContext) and isinstance(sock, ssl.SSLSocket) and cfg.tls is not None \
                and cfg.tls.session_resumption:
            self._ssl_context.remember_session(sock)
        info = self.connection_info()
        how = info.describe() if info else "?"
        if self._last_problem is not None:
            self.reconnects += 1
            self._log.info("connected to %s:%d again, %s (was: %s)", cfg.host, cfg.port, how, self._last_problem)
        else:
            self._log.info("connected to %s:%d, %s", cfg.host, cfg.port, how)
        self._last_problem = None

    @property
    def problem(self) -> Optional[str]:
        """Why the session is not connected, in plain words; None when all is well."""
        return self._last_problem

    def _problem(self, message: str, fields: Optional[Dict[str, str]] = None) -> None:
        # Once per state change: a broker down for an hour must not fill the journal. A bare
        # close after the handshake is the same refusal as the alert that sometimes precedes
        # it (whether the alert is read first is a race): not a new state.
        same = message == self._last_problem or (
            message == REJECTED_AFTER_HANDSHAKE and self._last_problem in CLIENT_CERT_REFUSALS)
        if not same:
            # The journal gets the raw TLS error or MQTT reason code as fields beside the plain words.
            log.error("%s:%d: %s; retrying with backoff (%g-%g s)", self._config.host, self._config.port,
                      message, self._config.reconnect.min_delay, self._config.reconnect.max_delay,
                      extra=dict(self._log.extra or {}, **(fields or {})))
            self._last_problem = message
        else:
            self._log.debug("%s:%d: still failing: %s", self._config.host, self._config.port, message)

    def _publish_offline(self) -> bool:
        """Once per session, from whichever thread gets here first while connected."""
        with self._offline_lock:
            if self._connected.is_set() and not self._offline_published:
                self._offline_published = True
                self.publish(self._config.status_topic, OFFLINE, qos=1, retain=True,
                             on_ack=self._offline_acked.set)
            return self._offline_published

    def _go_offline(self) -> None:
        if self._publish_offline():
            while not self._offline_acked.is_set() and time.monotonic() < self._stop_deadline:
                if self._client.loop(timeout=0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            if not self._offline_acked.is_set():
                self._log.warning("offline status not acknowledged before the stop deadline")
        self._connected.clear()
        self._client.disconnect()
        # One more pass writes the DISCONNECT packet out.
        self._client.loop(timeout=0.1)
        self._log.info("disconnected from %s:%d", self._config.host, self._config.port)


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Nagle plus delayed ACKs costs ~40 ms a round trip on small MQTT packets.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
