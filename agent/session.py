"""The one MQTT session: the only module that touches paho.

One network thread runs the connection: it connects, drives paho's loop on its own select()
(asleep until the next real deadline: keepalive, or a wake-up), reconnects with exponential
backoff and full jitter, and on stop publishes the offline status before a clean DISCONNECT
(which, by design, does not fire the Last Will). paho is used on the socket by one thread at a
time (_io_lock): a publish from another thread writes its packet itself when it can.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Set, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.config import MQTTConfig
from agent.tls import CLIENT_CERT_REFUSALS, REJECTED_AFTER_HANDSHAKE, ClientContext, describe_alert, describe_failure

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
# Only if paho (a future 2.x) no longer has the keepalive timestamps we read: then the network
# thread looks at keepalive at a fixed step, as paho's own loop() does.
ALIVE_STEP = 15.0
# A select() that returns a hair before paho's keepalive is due would just go round again.
_LATE = 0.005
# A publishing thread writes its packet itself only after this long without one (see _write_now).
_QUIET = 0.5


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


def backoff_delay(attempt: int, min_delay: float, max_delay: float, rng: random.Random) -> float:
    """Full jitter between min_delay and an exponential cap, so a fleet does not reconnect in step."""
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
        # With a write-registration hook set, paho's publish() only queues the packet and calls
        # the hook; without one it would write to the TLS socket from the publishing thread
        # even while the network thread reads it. The hook writes under _io_lock instead.
        self._client.on_socket_register_write = self._write_from_other_thread
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
        # The watchdog's evidence: (the deadline of the wait the network thread is in, None
        # while it works; when it last started work), monotonic. One tuple, replaced whole, so
        # the main thread never reads half of it.
        self._alive: Tuple[Optional[float], float] = (None, time.monotonic())
        # Our select()'s wake-up: a byte from a thread that queued a packet, or from stop().
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        self._wake_sent = False
        # Held by whichever thread runs paho on the socket (read, write, keepalive, connect):
        # an SSL object must not be used by two threads at once. Never held across select().
        self._io_lock = threading.Lock()
        # The thread whose publishes wait for its flush() (the sampler's), and whether one does.
        self._deferring: Optional[int] = None
        self._flush_due = False
        self._last_handoff = 0.0

    @property
    def last_alive(self) -> float:
        """When the network thread last showed progress (monotonic): the watchdog's evidence.

        Blocked in select() or a backoff with a deadline still ahead is progress: that is now.
        Busy, it is when the work began; still blocked past the deadline, the deadline. So the
        thread needs no timed wake-up of its own to look alive.
        """
        until, since = self._alive
        return since if until is None else min(time.monotonic(), until)

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
        self._publish_offline()
        self.flush()
        # Connected or not, the network thread may be asleep in select() until a keepalive.
        self._wake()
        self._thread.join(timeout + 1.0)

    def defer_writes(self, on: bool) -> None:
        """While on, packets this thread publishes are written by its flush(), which it calls
        right before it sleeps: the PUBACK then finds it asleep, and the network thread does not
        wake into a GIL held by the publisher (one wake-up per reading, not two). Off, flushes."""
        self._deferring = threading.get_ident() if on else None
        if not on:
            self.flush()

    def flush(self) -> None:
        """Write the packets deferred by this thread's publishes (see defer_writes); cheap when none."""
        if self._flush_due:
            self._flush_due = False
            self._write_now()

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
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        try:
            self._reconnect_loop()
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def _reconnect_loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._working()
            if self._connect_once():
                attempt = 0
            attempt += 1
            if self._stop.is_set():
                break
            delay = backoff_delay(attempt, self._config.reconnect.min_delay,
                                  self._config.reconnect.max_delay, self._rng)
            self._log.debug("next connection attempt in %.1f s", delay)
            # One wait however long: waiting for a deadline ahead is what the watchdog checks.
            self._alive = (time.monotonic() + delay, self._alive[1])
            self._stop.wait(delay)

    def _connect_once(self) -> bool:
        """One connection's life; True if it reached CONNACK."""
        cfg = self._config
        self._forget_last_attempt()
        try:
            with self._io_lock:
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
            # Idle, the thread sleeps until paho's keepalive next needs a look: no fixed step.
            rc = self._pass(self._keepalive_due())
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
        with self._io_lock:
            self._client.disconnect()
        return was_connected

    def _pass(self, until: float) -> MQTTErrorCode:
        """One select() over paho's socket and our wake-up socket, at most until `until`
        (monotonic), then paho's read, write and keepalive steps for whatever is ready."""
        client = self._client
        wake = self._wake_r
        with self._io_lock:
            sock = client.socket()
            if not isinstance(sock, socket.socket) or wake is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            # Bytes OpenSSL has already read from the socket do not make it readable again.
            pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
            # Write interest only while paho has bytes queued: a writable socket would wake us at once.
            writing = [sock] if client.want_write() else []
        timeout = 0.0 if pending else max(0.0, until - time.monotonic())
        self._alive = (until, self._alive[1])
        try:
            readable, _, _ = select.select([sock, wake], writing, [], timeout)
        except (OSError, ValueError):
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        finally:
            self._working()
        if wake in readable:
            # Cleared before reading, so a byte sent meanwhile is either read now or wakes the next select().
            self._wake_sent = False
            try:
                wake.recv(4096)
            except BlockingIOError:
                pass
        with self._io_lock:
            if sock in readable or pending:
                rc = client.loop_read()
                if rc or client.socket() is None:
                    return rc
            # A packet queued by another thread that could not write it only woke us: no need
            # to wait for a writable socket first.
            if client.want_write():
                rc = client.loop_write()
                if rc or client.socket() is None:
                    return rc
            return client.loop_misc()

    def _keepalive_due(self) -> float:
        """When paho's keepalive check next has something to do (monotonic, paho's own clock): a
        PINGREQ to send, or a PINGRESP (or CONNACK) that is overdue."""
        client = self._client
        keepalive = client.keepalive
        try:
            # paho 2.x has no public accessor for these; they are what its loop_misc() looks at.
            last = min(client._last_msg_out, client._last_bytes_received)  # noqa: SLF001
            ping = client._ping_t  # noqa: SLF001
        except AttributeError:
            return time.monotonic() + min(ALIVE_STEP, keepalive / 4)
        due = last + keepalive
        if ping > 0:
            due = min(due, ping + keepalive)
        return due + _LATE

    def _working(self) -> None:
        self._alive = (None, time.monotonic())

    def _wake(self) -> None:
        """Make the network thread's select() return now."""
        sock = self._wake_w
        if sock is not None and not self._wake_sent:
            self._wake_sent = True
            try:
                sock.send(b"\0")
            except OSError:
                pass  # the buffer is full (a wake-up is pending anyway) or the thread has ended

    def _write_from_other_thread(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        """paho's hook when a packet is queued (and the socket was not registered for writing yet).

        On the network thread the next select() sees want_write() anyway. On a thread that
        defers its writes, its flush() writes them. On any other thread (a sensor worker, the
        batch timer, stop()) the packet is written right here when the socket is free, so a
        reading costs the network thread one wake-up (its PUBACK), not two.
        """
        ident = threading.get_ident()
        if ident == self._thread.ident:
            return
        if ident == self._deferring:
            self._flush_due = True
            return
        self._write_now()

    def _write_now(self) -> None:
        """A packet queued on another thread: write it from here, or wake the network thread to.

        Measured (bench/run.py, docs/performance.md section 3): at one reading in seconds,
        writing here saves the network thread a wake-up (it wakes for the PUBACK only). At
        many readings a second the PUBACK comes back while this thread still holds the socket
        lock, and the network thread wakes into it: there, waking it to write is one wake-up
        (it is still up when the PUBACK arrives) instead of two.
        """
        client = self._client
        now = time.monotonic()
        quiet, self._last_handoff = now - self._last_handoff >= _QUIET, now
        if quiet and self._io_lock.acquire(blocking=False):
            try:
                rc = client.loop_write()
                done = rc == MQTTErrorCode.MQTT_ERR_SUCCESS and client.socket() is not None \
                    and not client.want_write()
            finally:
                self._io_lock.release()
            if done:
                return
        # Busy (the network thread is on the socket), left over (socket buffer full) or failed
        # (paho closed the socket under our select()): the network thread takes it from here.
        self._wake()

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
                if self._pass(min(self._stop_deadline, self._keepalive_due())) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            if not self._offline_acked.is_set():
                self._log.warning("offline status not acknowledged before the stop deadline")
        self._connected.clear()
        with self._io_lock:
            self._client.disconnect()
        # Write the DISCONNECT packet out (paho closes the socket once it has).
        until = time.monotonic() + 0.1
        while self._client.want_write() and time.monotonic() < until:
            if self._pass(until) != MQTTErrorCode.MQTT_ERR_SUCCESS or self._client.socket() is None:
                break
        self._log.info("disconnected from %s:%d", self._config.host, self._config.port)


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Nagle plus delayed ACKs costs ~40 ms a round trip on small MQTT packets.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
