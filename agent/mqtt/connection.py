"""One broker configuration's connection: a paho client and the network thread that runs it.

The thread connects, drives paho's loop on its own select() (asleep until the next real
deadline: keepalive, or a wake-up; agent/mqtt/socket_io.py), reconnects with exponential backoff
and full jitter, and on stop publishes the offline status before a clean DISCONNECT (which, by
design, does not fire the Last Will). A reload that changes the broker section replaces this
object inside the one Session (agent/mqtt/session.py).
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from typing import Any, Dict, Optional, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config.schema import MQTTConfig
from agent.mqtt import broker_probe, paho_shim
from agent.mqtt.broker_hosts import BrokerList, describe
from agent.mqtt.lifecycle import Lifecycle
from agent.mqtt.messages import OFFLINE, TEXT, ConnectionInfo, MessageProperties
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
from agent.mqtt.reconnect_schedule import AfterLoss, backoff_delay
from agent.mqtt.refusals import Outstanding
from agent.mqtt.socket_io import Liveness, SocketIO, set_nodelay
from agent.mqtt.state import ConnectionState
from agent.mqtt.subscriptions import Subscriptions
from agent.mqtt.tls import ClientContext

# The session's lines keep the logger name they always had (journal filters use it).
log = logging.getLogger("agent.mqtt.session")

# How one connection ended (_connect_once).
FAILED, LOST, MOVING_BACK = "failed", "lost", "moving back"


class SessionListener(Protocol):
    """The one object a session reports to (the daemon wires it; agent/service/wiring.py)."""

    def connected(self, info: ConnectionInfo) -> None:
        """After each CONNACK, on the network thread, once the connect is logged."""

    def writable(self) -> None:
        """After every network event: the session may take more (PUBACKs freed the window)."""


class Connection:
    def __init__(self, config: MQTTConfig, ssl_context: Optional[ssl.SSLContext], listener: SessionListener,
                 subscriptions: Subscriptions, online: bytes, had_connack: bool,
                 rng: random.Random) -> None:
        self._config = config
        self.listener = listener
        self._subscriptions = subscriptions
        self._life = Lifecycle(online)
        self._rng = rng
        self._ssl_context = ssl_context
        # mqtt.hosts in order of preference (mqtt.host alone: a list of one).
        self._brokers = BrokerList(config.hosts or ((config.host, config.port),), config.failback)
        # Every line about this session carries BROKER= in the journal (the broker in use).
        self._log = logging.LoggerAdapter(log, {"BROKER": describe(self._brokers.current)})
        self.properties = MessageProperties(config.protocol == "5", config.message_expiry)
        self.state = ConnectionState(config.reconnect, had_connack)
        self._client = self._new_client(config)
        self.io = SocketIO(self._client, self._life.liveness)
        subscriptions.install(self._client)
        # QoS 1 messages until PUBACK, their callbacks, and the messages the broker refuses.
        self.outstanding = Outstanding(self._log)
        self._thread = threading.Thread(target=self._run, name="mqtt-session", daemon=True)

    def _new_client(self, config: MQTTConfig) -> mqtt.Client:
        if config.protocol == "5":
            # MQTT 5 has clean_start and a session expiry instead of clean_session (paho refuses both).
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id,
                                 clean_session=config.clean_session, protocol=mqtt.MQTTv311)
        if self._ssl_context is not None:
            client.tls_set_context(self._ssl_context)
        if config.username is not None:
            # Usually no password: the client certificate is the credential (Azure IoT Hub's X.509
            # devices); some brokers want both (mqtt.password_file).
            client.username_pw_set(config.username, config.password)
        client.will_set(config.status_topic, OFFLINE, qos=1, retain=True, properties=self.properties.will())
        client.max_inflight_messages_set(config.inflight)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_log = self._handle_log
        client.on_subscribe = self._handle_subscribe
        client.on_socket_open = set_nodelay
        return client

    @property
    def config(self) -> MQTTConfig:
        return self._config

    @property
    def client(self) -> mqtt.Client:
        """paho's client, for publishing and subscribing (the session's other threads)."""
        return self._client

    @property
    def broker(self) -> str:
        return describe(self._brokers.current)

    def start(self) -> None:
        cfg = self._config
        self._log.info("connecting to %s:%d as %r (%s)", *self._brokers.current, cfg.client_id,
                       "TLS %s+" % cfg.tls.min_version if cfg.tls else "plain MQTT, no TLS")
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Publish offline, disconnect, and wait for the network thread, all within `timeout`."""
        self._life.stop(timeout)
        self.publish_offline()
        self.io.flush()
        # Connected or not, the network thread may be asleep in select() until a keepalive.
        self.io.wake()
        self._thread.join(timeout + 1.0)

    @property
    def io_liveness(self) -> Liveness:
        return self._life.liveness

    def info(self) -> Optional[ConnectionInfo]:
        """What the live connection negotiated; None while disconnected."""
        sock = self._client.socket()
        if not self.state.connected or not isinstance(sock, socket.socket):
            return None
        nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        present = self.state.session_present
        if isinstance(sock, ssl.SSLSocket):
            cipher = sock.cipher()
            return ConnectionInfo(sock.version(), cipher[0] if cipher else None, nodelay, bool(sock.session_reused),
                                  sock.selected_alpn_protocol(), self._config.protocol, present)
        return ConnectionInfo(None, None, nodelay, protocol=self._config.protocol, session_present=present)

    def publish_offline(self) -> bool:
        def publish(on_ack: Any) -> None:
            info = self._client.publish(self._config.status_topic, OFFLINE, qos=1, retain=True,
                                        properties=self.properties.status(TEXT))
            if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self.outstanding.sent(info.mid, self._config.status_topic, on_ack)

        return self._life.publish_offline_once(self.state.connected, publish)

    def _connect_options(self) -> Dict[str, Any]:
        """clean_start and the session expiry for MQTT 5's CONNECT; nothing for 3.1.1.

        paho's MQTT_CLEAN_START_FIRST_ONLY counts from each connect() call, and every attempt
        is one: we keep the count ourselves. A clean start only on this process's first connect,
        so with a session expiry the broker keeps queued messages across our reconnects."""
        if self._config.protocol != "5":
            return {}
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._config.session_expiry
        clean_start = self._config.session_expiry == 0 or not self.state.had_connack
        return {"clean_start": clean_start, "properties": properties}

    # -- paho callbacks (network thread) --------------------------------------------------

    def _handle_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                        properties: Any) -> None:
        if reason_code.is_failure:
            self.state.refusal = ConnectRefused.from_paho(reason_code, properties, self._config.protocol == "5")
            return
        self.state.accepted(bool(getattr(flags, "session_present", False)))
        # Before paho writes its unacknowledged messages again: one the broker refuses goes here.
        self.outstanding.connected(client)
        online, content_type = self._life.online
        info = client.publish(self._config.status_topic, online, qos=1, retain=True,
                              properties=self.properties.status(content_type))
        self.outstanding.sent(info.mid, self._config.status_topic)
        self._subscriptions.resend(client, then=self.state.up)

    def _handle_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any,
                        properties: Any) -> None:
        self.outstanding.puback(mid, reason_code)

    def _handle_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any,
                           properties: Any) -> None:
        # Only MQTT 5 brokers say why they end a connection: a DISCONNECT packet with a reason code.
        if not getattr(flags, "is_disconnect_packet_from_server", False):
            return
        why = BrokerDisconnect(reason_code, properties)
        # The "connection lost" line that follows says this too.
        self.state.socket_error = str(why)
        # The module logger, not the adapter: an adapter replaces `extra` with its own.
        log.warning("%s:%d: %s", *self._brokers.current, why, extra=dict(self._log.extra or {}, MQTT_RC=why.name))

    def _handle_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any,
                          properties: Any) -> None:
        self._subscriptions.acknowledged(mid, reason_codes, self._log)

    def _handle_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and "socket" in text:
            self.state.socket_error = text

    # -- the network thread ---------------------------------------------------------------

    def _run(self) -> None:
        self.io.open()
        try:
            self._reconnect_loop()
        finally:
            self.io.close()

    def _reconnect_loop(self) -> None:
        attempt = 0
        rc = self._config.reconnect
        after_loss: Optional[AfterLoss] = None
        liveness = self._life.liveness
        while not self._life.stopping():
            liveness.working()
            outcome = self._connect_once()
            lost = outcome != FAILED
            # Only a connection that lasted starts the backoff again: a broker that accepts and
            # then closes at once (a refused message, a flapping ACL) sees it grow.
            if lost and self.outstanding.stable:
                attempt = 0
                # Attempts after a loss keep one place in windows growing from the spread (see
                # agent/mqtt/reconnect_schedule.py); before any connection, plain exponential backoff.
                after_loss = AfterLoss(rc.min_delay, rc.max_delay, rc.spread, self._rng,
                                       time.monotonic()) if rc.spread > 0 else None
            attempt += 1
            if self._life.stopping():
                break
            if outcome == MOVING_BACK:
                attempt = 0
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
            liveness.waiting_until(time.monotonic() + delay)
            self._life.sleep(delay)

    def _connect_once(self) -> str:
        """One connection's life: FAILED before CONNACK, LOST after, or MOVING_BACK."""
        host, port = self._brokers.current
        self.state.attempt()
        try:
            with self.io.exclusive() as client:
                client.connect(host, port, keepalive=self._config.keepalive, **self._connect_options())
        except (OSError, ValueError) as exc:
            if isinstance(self._ssl_context, ClientContext):
                self._ssl_context.discard_last_socket()
            self._problem(ConnectFailed(exc, host))
            return FAILED
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        was_connected = False
        while not self._life.stopping() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            # Idle, the thread sleeps until paho's keepalive (or a failback check) next needs a look.
            rc = self.io.pass_once(min(paho_shim.keepalive_due(self._client),
                                       self._brokers.failback_due() or float("inf")))
            if self.state.connected and not was_connected:
                was_connected = True
                self._brokers.connected()
                self._on_connected()
            self.listener.writable()
            if was_connected and rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._time_to_fail_back():
                self._leave(reason="moving back to the preferred broker %s" % describe(self._brokers.preferred))
                return MOVING_BACK
        if self._life.stopping() and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._go_offline()
            return LOST if was_connected else FAILED
        if was_connected:
            self.state.down(lost=True)
            # A keepalive timeout is the link going quiet; anything else, the broker (or the path) closing.
            self.outstanding.lost(by_broker=rc != MQTTErrorCode.MQTT_ERR_KEEPALIVE)
            self._problem(ConnectionLost(self.state.socket_error))
        else:
            self.state.down()
            self._problem(self.state.refusal or self._closed_before_connack())
        with self.io.exclusive() as client:
            client.disconnect()
        return LOST if was_connected else FAILED

    def _closed_before_connack(self) -> SessionProblem:
        raw = self.state.socket_error
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
        3.x does that; a refused certificate looks the same under TLS 1.3). Asked once per session,
        and never once a CONNACK has come: one extra connection, not one per retry."""
        if self._config.protocol != "5" or self.state.had_connack:
            return False
        cfg = self._config

        def probe() -> bool:
            liveness = self._life.liveness
            liveness.waiting_until(time.monotonic() + broker_probe.TIMEOUT)
            try:
                return broker_probe.answers_mqtt311(*self._brokers.current, self._ssl_context, cfg.client_id,
                                                    cfg.keepalive, cfg.username)
            finally:
                liveness.working()

        return self._life.speaks_311_only(probe)

    def _on_connected(self) -> None:
        cfg = self._config
        sock = self._client.socket()
        # TLS resumption: the ticket that has arrived by CONNACK, offered at the next connect.
        if isinstance(self._ssl_context, ClientContext) and isinstance(sock, ssl.SSLSocket) and cfg.tls is not None \
                and cfg.tls.session_resumption:
            self._ssl_context.remember_session(sock)
        info = self.info()
        self.state.settled(self._brokers.current, info.describe() if info else "?", self._log)
        if info is not None:
            self.listener.connected(info)

    def _problem(self, problem: SessionProblem) -> None:
        self.state.report(problem, self._brokers.current, self._log)

    def _go_offline(self) -> None:
        if self.publish_offline():
            acked, deadline = self._life.offline_acked, self._life.deadline
            while not acked.is_set() and time.monotonic() < deadline:
                due = min(deadline, paho_shim.keepalive_due(self._client))
                if self.io.pass_once(due) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            if not acked.is_set():
                self._log.warning("offline status not acknowledged before the stop deadline")
        self._leave()

    def _leave(self, reason: str = "") -> None:
        """A clean DISCONNECT (the broker drops our Last Will) from the broker in use."""
        self.state.down(lost=bool(reason))
        with self.io.exclusive() as client:
            client.disconnect()
        # Write the DISCONNECT packet out (paho closes the socket once it has).
        until = time.monotonic() + 0.1
        while self._client.want_write() and time.monotonic() < until:
            if self.io.pass_once(until) != MQTTErrorCode.MQTT_ERR_SUCCESS or self._client.socket() is None:
                break
        self._log.info("disconnected from %s:%d%s", *self._brokers.current, ": " + reason if reason else "")

    def _use_broker(self, move: Any) -> Any:
        """Move (advance or use_preferred), and log the change of broker once."""
        before = self._brokers.current
        result = move()
        if self._brokers.current != before:
            self._log = logging.LoggerAdapter(log, {"BROKER": describe(self._brokers.current)})
            self._log.info("next broker: %s (of mqtt.hosts)", describe(self._brokers.current))
        return result

    def _time_to_fail_back(self) -> bool:
        if not self._brokers.check_due(self.outstanding.awaiting):
            return False
        liveness = self._life.liveness
        liveness.working()
        liveness.waiting_until(time.monotonic() + 5.0)
        back = self._brokers.preferred_answers(self._ssl_context)
        liveness.working()
        return back

