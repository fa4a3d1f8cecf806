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
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config.schema import MQTTConfig
from agent.mqtt import broker_probe, paho_shim
from agent.mqtt.broker_hosts import BrokerList, describe
from agent.mqtt.problems import (
    BrokerDisconnect,
    ClosedBeforeConnack,
    ConnectFailed,
    ConnectionLost,
    ConnectRefused,
    RejectedAfterHandshake,
    SessionProblem,
    TLSAlert,
    alert_of,
)
from agent.mqtt.reconnect_schedule import AfterLoss
from agent.mqtt.refusals import Outstanding
from agent.mqtt.tls import ClientContext

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
# MQTT 5 ContentType of what we publish: consumers (and cloud rules engines) need not sniff.
JSON = "application/json"
TEXT = "text/plain"

# (topic, payload, properties): properties are paho's MQTT 5 properties, or None on 3.1.1.
# Runs on the network thread: it must hand the message on, never block.
OnMessage = Callable[[str, bytes, Any], None]

# A publishing thread writes its packet itself only after this long without one (see _write_now).
_QUIET = 0.5


@dataclass(frozen=True)
class ConnectionInfo:
    tls_version: Optional[str]
    cipher: Optional[str]
    nodelay: bool
    resumed: bool = False
    # The ALPN protocol the broker chose (None: none offered or none agreed).
    alpn: Optional[str] = None
    protocol: str = "3.1.1"
    # CONNACK's session-present flag: the broker had kept this client's session.
    session_present: bool = False

    def describe(self) -> str:
        if not self.tls_version:
            text = "plain MQTT"
        else:
            text = "%s %s%s" % (self.tls_version, self.cipher, ", resumed TLS session" if self.resumed else "")
        if self.alpn:
            text += ", ALPN %s" % self.alpn
        if self.protocol == "5":
            text += ", MQTT 5, %s" % ("session present" if self.session_present else "new session")
        return text


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
                 on_io: Callable[[], None] = lambda: None, rng: Optional[random.Random] = None,
                 resume_from: Optional["Session"] = None,
                 on_connected: Callable[[ConnectionInfo], None] = lambda info: None,
                 online: bytes = ONLINE) -> None:
        self._config = config
        # The retained status after each CONNACK: the daemon's is a JSON object that says where
        # this run's seqs start (agent/health_report.online_status).
        self._online = online
        self._online_type = TEXT if online == ONLINE else JSON
        self._on_io = on_io
        # After each CONNACK, on the network thread, once the connect is logged.
        self._on_connected_hook = on_connected
        self._rng = rng or random.Random()
        # mqtt.hosts in order of preference (mqtt.host alone: a list of one).
        self._brokers = BrokerList(config.hosts or ((config.host, config.port),), config.failback)
        # Every line about this session carries BROKER= in the journal (the broker in use).
        self._log = logging.LoggerAdapter(log, {"BROKER": describe(self._brokers.current)})
        # Set while moving back to the preferred broker: the next connect goes there at once.
        self._failing_back = False
        self._failback_waits = 0
        self._v5 = config.protocol == "5"
        self._property_cache: Dict[Tuple[int, str, bool], Properties] = {}
        if self._v5:
            # MQTT 5 has clean_start and a session expiry instead of clean_session (paho refuses both).
            self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                                       protocol=mqtt.MQTTv5)
        else:
            self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                                       clean_session=config.clean_session, protocol=mqtt.MQTTv311)
        self._ssl_context = ssl_context
        if ssl_context is not None:
            self._client.tls_set_context(ssl_context)
        if config.username is not None:
            # Usually no password: the client certificate is the credential (Azure IoT Hub's X.509
            # devices); some brokers want both (mqtt.password_file).
            self._client.username_pw_set(config.username, config.password)
        self._client.will_set(config.status_topic, OFFLINE, qos=1, retain=True,
                              properties=self._properties(PacketTypes.WILLMESSAGE, TEXT, expires=False))
        self._client.max_inflight_messages_set(config.inflight)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_publish = self._handle_publish
        self._client.on_log = self._handle_log
        self._client.on_subscribe = self._handle_subscribe
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
        # QoS 1 messages until PUBACK, their callbacks, and the messages the broker refuses.
        self._outstanding = Outstanding(self._log)
        self._subs_lock = threading.Lock()
        self._subscriptions: Dict[str, Tuple[int, OnMessage]] = {}
        self._pending_subs: Dict[int, List[str]] = {}
        # "subscribed to" is said once per session object, not at every reconnect.
        self._announced: Set[str] = set()
        self._refusal: Optional[ConnectRefused] = None
        self._socket_error: Optional[str] = None
        # The answer of the one MQTT 3.1.1 probe (see _speaks_311_only); None until asked.
        self._protocol_probe: Optional[bool] = None
        self._last_problem: Optional[SessionProblem] = None
        self._session_present = False
        # Set at the first CONNACK: later connects of this process ask the broker to resume the session.
        # A session replaced by a reload hands its broker-side session on when it is the same
        # client at the same broker: a reload is not a new process, and must not start clean.
        self._had_connack = resume_from is not None and resume_from.had_connack and (
            (config.host, config.port, config.client_id)
            == (resume_from._config.host, resume_from._config.port, resume_from._config.client_id))
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
    def had_connack(self) -> bool:
        """Whether the broker has accepted this session at least once (MQTT 5: resume, not start clean)."""
        return self._had_connack

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
            return ConnectionInfo(sock.version(), cipher[0] if cipher else None, nodelay, bool(sock.session_reused),
                                  sock.selected_alpn_protocol(), self._config.protocol, self._session_present)
        return ConnectionInfo(None, None, nodelay, protocol=self._config.protocol,
                              session_present=self._session_present)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        cfg = self._config
        self._log.info("connecting to %s:%d as %r (%s)", *self._where, cfg.client_id,
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
                on_ack: Optional[Callable[[], None]] = None, content_type: str = JSON,
                on_refused: Optional[Callable[[], None]] = None) -> bool:
        """False if paho did not take the message; `on_ack` runs on PUBACK (QoS 1) or when sent (QoS 0).

        `on_refused` runs instead when the broker refuses the message (an MQTT 5 PUBACK with a
        failure code, or the connection closed right after it twice: agent.mqtt.refusals); without
        it, `on_ack` does. A refused message is not sent again.

        On MQTT 5 the message carries `content_type` and, unless it is the retained status,
        mqtt.message_expiry."""
        properties = self._properties(PacketTypes.PUBLISH, content_type, expires=not retain)
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        # QoS 1 messages stay in paho's store even when the connection is down (NO_CONN):
        # paho sends them again after the next CONNACK, so they are taken.
        taken = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN)
        if taken and qos > 0:
            self._outstanding.sent(info.mid, topic, on_ack, on_refused)
        elif taken and on_ack is not None:
            on_ack()
        return taken

    def _properties(self, packet_type: int, content_type: str, expires: bool) -> Optional[Properties]:
        if not self._v5:
            return None
        # The same few combinations every time: built once, not per reading (paho only reads them).
        key = (packet_type, content_type, expires)
        properties = self._property_cache.get(key)
        if properties is None:
            properties = Properties(packet_type)  # type: ignore[no-untyped-call]
            properties.ContentType = content_type
            if expires and self._config.message_expiry is not None:
                properties.MessageExpiryInterval = self._config.message_expiry
            self._property_cache[key] = properties
        return properties

    def _connect_options(self) -> Dict[str, Any]:
        """clean_start and the session expiry for MQTT 5's CONNECT; nothing for 3.1.1.

        paho's MQTT_CLEAN_START_FIRST_ONLY counts from each connect() call, and every attempt
        is one: we keep the count ourselves. A clean start only on this process's first connect,
        so with a session expiry the broker keeps queued messages across our reconnects."""
        if not self._v5:
            return {}
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._config.session_expiry
        clean_start = self._config.session_expiry == 0 or not self._had_connack
        return {"clean_start": clean_start, "properties": properties}

    def subscribe(self, topic_filter: str, qos: int, on_message: OnMessage) -> None:
        """Deliver messages matching `topic_filter` to `on_message`, now and after every reconnect.

        With a clean session the broker forgets subscriptions at each disconnect, so they are
        made again after every CONNACK."""
        def deliver(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            on_message(msg.topic, bytes(msg.payload), getattr(msg, "properties", None))

        # Outside our lock: paho holds its callback lock while it runs on_connect, which takes ours.
        self._client.message_callback_add(topic_filter, deliver)
        with self._subs_lock:
            self._subscriptions[topic_filter] = (qos, on_message)
            if self._connected.is_set():
                self._send_subscribe(self._client, topic_filter, qos)

    def reply(self, topic: str, payload: bytes, correlation: Optional[bytes] = None) -> bool:
        """A QoS 1, not retained answer to a request; `correlation` is the request's MQTT 5
        CorrelationData, echoed back (only a v5 request can carry one)."""
        properties = None
        if correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation
        info = self._client.publish(topic, payload, qos=1, retain=False, properties=properties)
        taken = info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
        if taken:
            self._outstanding.sent(info.mid, topic)
        return taken

    def _send_subscribe(self, client: mqtt.Client, topic_filter: str, qos: int) -> None:
        rc, mid = client.subscribe(topic_filter, qos)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending_subs[mid] = [topic_filter]

    # -- paho callbacks (network thread) --------------------------------------------------

    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                        properties: Any) -> None:
        if reason_code.is_failure:
            self._refusal = ConnectRefused.from_paho(reason_code, properties, self._v5)
            return
        self._refusal = None
        self._had_connack = True
        self._session_present = bool(getattr(flags, "session_present", False))
        # Before paho writes its unacknowledged messages again: one the broker refuses goes here.
        self._outstanding.connected(client)
        info = client.publish(self._config.status_topic, self._online, qos=1, retain=True,
                              properties=self._properties(PacketTypes.PUBLISH, self._online_type, expires=False))
        self._outstanding.sent(info.mid, self._config.status_topic)
        self.connected_since = time.time()
        self.disconnected_since = None
        # Under the lock subscribe() takes: a filter added meanwhile is sent by one side or the other.
        with self._subs_lock:
            for topic_filter, (qos, _) in self._subscriptions.items():
                self._send_subscribe(client, topic_filter, qos)
            self._connected.set()

    def _handle_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                        properties: Any) -> None:
        self._outstanding.puback(mid, reason_code)

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                           properties: Any) -> None:
        # Only MQTT 5 brokers say why they end a connection: a DISCONNECT packet with a reason code.
        if not getattr(flags, "is_disconnect_packet_from_server", False):
            return
        why = BrokerDisconnect(reason_code, properties)
        # The "connection lost" line that follows says this too.
        self._socket_error = str(why)
        # The module logger, not the adapter: an adapter replaces `extra` with its own.
        log.warning("%s:%d: %s", *self._where, why, extra=dict(self._log.extra or {}, MQTT_RC=why.name))

    def _handle_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                          properties: Any) -> None:
        with self._subs_lock:
            filters = self._pending_subs.pop(mid, [])
        for topic_filter, code in zip(filters, reason_codes):
            if code.is_failure:
                # Nothing will arrive on it: the broker's ACL is the usual reason.
                self._log.error("the broker refused the subscription to %s (%s): check its ACL "
                                "(edison-agent pki acl)", topic_filter, code)
            elif topic_filter not in self._announced:
                self._announced.add(topic_filter)
                self._log.info("subscribed to %s", topic_filter)

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
        rc = self._config.reconnect
        after_loss: Optional[AfterLoss] = None
        while not self._stop.is_set():
            self._working()
            lost = self._connect_once()
            # Only a connection that lasted starts the backoff again: a broker that accepts and
            # then closes at once (a refused message, a flapping ACL) sees it grow.
            stable = lost and self._outstanding.stable
            if stable:
                attempt = 0
                # Attempts after a loss keep one place in windows growing from the spread (see
                # agent/mqtt/reconnect_schedule.py); before any connection, plain exponential backoff.
                after_loss = AfterLoss(rc.min_delay, rc.max_delay, rc.spread, self._rng,
                                       time.monotonic()) if rc.spread > 0 else None
            attempt += 1
            if self._stop.is_set():
                break
            if self._failing_back:
                self._failing_back, attempt = False, 0
                self._use_broker(self._brokers.use_preferred)
                continue
            # With mqtt.hosts: the next broker, at once after a failed attempt; a lost connection
            # still waits the spread (a gateway that fails drops all its boards at one instant).
            new_round = self._use_broker(self._brokers.advance)
            if self._brokers.several and not lost and not new_round:
                continue
            if after_loss is not None:
                delay = after_loss.next_delay(time.monotonic())
            else:
                delay = backoff_delay(attempt, rc.min_delay, rc.max_delay, self._rng,
                                      spread=rc.spread if lost and attempt == 1 else None)
            self._log.debug("next connection attempt in %.1f s", delay)
            # One wait however long: waiting for a deadline ahead is what the watchdog checks.
            self._alive = (time.monotonic() + delay, self._alive[1])
            self._stop.wait(delay)

    def _connect_once(self) -> bool:
        """One connection's life; True if it reached CONNACK."""
        cfg = self._config
        host, port = self._where
        self._forget_last_attempt()
        try:
            with self._io_lock:
                self._client.connect(host, port, keepalive=cfg.keepalive, **self._connect_options())
        except (OSError, ValueError) as exc:
            if isinstance(self._ssl_context, ClientContext):
                self._ssl_context.discard_last_socket()
            self._problem(ConnectFailed(exc, host))
            return False
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        was_connected = False
        while not self._stop.is_set() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            # Idle, the thread sleeps until paho's keepalive (or a failback check) next needs a look.
            rc = self._pass(min(self._keepalive_due(), self._brokers.failback_due() or float("inf")))
            if self._connected.is_set() and not was_connected:
                was_connected = True
                self._brokers.connected()
                self._on_connected()
            self._on_io()
            if was_connected and rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._time_to_fail_back():
                self._failing_back = True
                self._leave(reason="moving back to the preferred broker %s" % describe(self._preferred))
                return True
        if self._stop.is_set() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._go_offline()
            return was_connected
        self._connected.clear()
        if was_connected:
            # A keepalive timeout is the link going quiet; anything else, the broker (or the path) closing.
            self._outstanding.lost(by_broker=rc != MQTTErrorCode.MQTT_ERR_KEEPALIVE)
            self.disconnected_since = time.time()
            self._problem(ConnectionLost(self._socket_error))
        elif self._refusal is not None:
            self._problem(self._refusal)
        else:
            self._problem(self._closed_before_connack())
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
                rc = self._loop_write()
                if rc or client.socket() is None:
                    return rc
            return client.loop_misc()

    def _loop_write(self) -> MQTTErrorCode:
        """paho's loop_write(), then the time of the write where its keepalive looks (under _io_lock)."""
        client = self._client
        rc = client.loop_write()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and not client.want_write():
            paho_shim.note_packet_sent(client)
        return rc

    def _keepalive_due(self) -> float:
        return paho_shim.keepalive_due(self._client)

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
                rc = self._loop_write()
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

    def _closed_before_connack(self) -> SessionProblem:
        raw = self._socket_error
        alert = alert_of(raw or "")
        if alert is not None:
            return TLSAlert(alert, raw or "")
        if self._speaks_311_only():
            return ClosedBeforeConnack(broker_probe.SPEAKS_311_ONLY, raw)
        if self._config.tls is not None:
            return RejectedAfterHandshake(raw)
        return ClosedBeforeConnack("broker closed the connection before accepting it (%s)"
                                   % (raw or "no reason given"), raw)

    def _speaks_311_only(self) -> bool:
        """Whether a broker that closed on our MQTT 5 CONNECT answers an MQTT 3.1.1 one (RabbitMQ
        3.x does that; a refused certificate looks the same under TLS 1.3). Asked once per session
        object, and never once a CONNACK has come: one extra connection, not one per retry."""
        if not self._v5 or self._had_connack:
            return False
        if self._protocol_probe is None:
            cfg = self._config
            self._alive = (time.monotonic() + broker_probe.TIMEOUT, self._alive[1])
            self._protocol_probe = broker_probe.answers_mqtt311(
                *self._where, self._ssl_context, cfg.client_id, cfg.keepalive, cfg.username)
            self._working()
        return self._protocol_probe

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
            self._log.info("connected to %s:%d again, %s (was: %s)", *self._where, how, self._last_problem)
        else:
            self._log.info("connected to %s:%d, %s", *self._where, how)
        self._last_problem = None
        if info is not None:
            self._on_connected_hook(info)

    @property
    def problem(self) -> Optional[str]:
        """Why the session is not connected, in plain words; None when all is well."""
        problem = self._last_problem
        return str(problem) if problem is not None else None

    def _problem(self, problem: SessionProblem) -> None:
        # Once per state change (problems.SessionProblem.same_state): a broker down for an hour
        # must not fill the journal.
        if not problem.same_state(self._last_problem):
            # Before the log line: a health document built meanwhile must not show the logged
            # error as the last one while the session still says nothing is wrong.
            self._last_problem = problem
            # The journal gets the raw TLS error or MQTT reason code as fields beside the plain words.
            log.error("%s:%d: %s; retrying with backoff (%g-%g s)", *self._where,
                      problem, self._config.reconnect.min_delay, self._config.reconnect.max_delay,
                      extra=dict(self._log.extra or {}, **problem.fields))
        else:
            self._log.debug("%s:%d: still failing: %s", *self._where, problem)

    def _publish_offline(self) -> bool:
        """Once per session, from whichever thread gets here first while connected."""
        with self._offline_lock:
            if self._connected.is_set() and not self._offline_published:
                self._offline_published = True
                self.publish(self._config.status_topic, OFFLINE, qos=1, retain=True,
                             on_ack=self._offline_acked.set, content_type=TEXT)
            return self._offline_published

    def _go_offline(self) -> None:
        if self._publish_offline():
            while not self._offline_acked.is_set() and time.monotonic() < self._stop_deadline:
                if self._pass(min(self._stop_deadline, self._keepalive_due())) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            if not self._offline_acked.is_set():
                self._log.warning("offline status not acknowledged before the stop deadline")
        self._leave()

    def _leave(self, reason: str = "") -> None:
        """A clean DISCONNECT (the broker drops our Last Will) from the broker in use."""
        self._connected.clear()
        with self._io_lock:
            self._client.disconnect()
        # Write the DISCONNECT packet out (paho closes the socket once it has).
        until = time.monotonic() + 0.1
        while self._client.want_write() and time.monotonic() < until:
            if self._pass(until) != MQTTErrorCode.MQTT_ERR_SUCCESS or self._client.socket() is None:
                break
        if reason:
            self.disconnected_since = time.time()
        self._log.info("disconnected from %s:%d%s", *self._where, ": " + reason if reason else "")

    # -- mqtt.hosts (agent/mqtt/broker_hosts.py) ----------------------------------------------------

    @property
    def _where(self) -> Tuple[str, int]:
        return self._brokers.current

    @property
    def _preferred(self) -> Tuple[str, int]:
        return (self._config.hosts or ((self._config.host, self._config.port),))[0]

    @property
    def broker(self) -> str:
        """The broker in use (or being tried), as host:port."""
        return describe(self._where)

    def _use_broker(self, move: Callable[[], Any]) -> Any:
        """Move (advance or use_preferred), and log the change of broker once."""
        before = self._where
        result = move()
        if self._where != before:
            self._log = logging.LoggerAdapter(log, {"BROKER": describe(self._where)})
            self._log.info("next broker: %s (of mqtt.hosts)", describe(self._where))
        return result

    def _time_to_fail_back(self) -> bool:
        """On another broker, failback due, and no message awaiting its PUBACK (a move then costs
        no duplicate): check the preferred one."""
        due = self._brokers.failback_due()
        if due is None or time.monotonic() < due:
            return False
        if self._outstanding.awaiting:
            # A PUBACK is usually milliseconds away; a board that is never idle moves anyway, by
            # QoS 1's rule (the unacknowledged are sent again to the preferred broker).
            self._brokers.postpone(0.2)
            self._failback_waits += 1
            if self._failback_waits < 25:
                return False
        self._failback_waits = 0
        self._working()
        self._alive = (time.monotonic() + 5.0, self._alive[1])
        back = self._brokers.preferred_answers(self._ssl_context)
        self._working()
        return back


def _set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Nagle plus delayed ACKs costs ~40 ms a round trip on small MQTT packets.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
