"""The one MQTT session of a run: the only object the rest of the agent publishes through.

It outlives a reload: a changed broker section (or rotated certificate files) replaces its
connection (agent/mqtt/connection.py: one paho client and its network thread), while the
subscriptions, the listener and every holder of the session stay. paho is used on the socket
by one thread at a time (agent/mqtt/socket_io.py); a publish from another thread writes its
packet itself when it can.
"""

from __future__ import annotations

import random
import ssl
import threading
from typing import Callable, Optional

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config.schema import MQTTConfig
from agent.mqtt.connection import Connection, SessionListener
from agent.mqtt.messages import JSON, ONLINE, ConnectionInfo
from agent.mqtt.subscriptions import OnMessage, Subscriptions

__all__ = ["ConnectionInfo", "OnMessage", "Session", "SessionListener"]


class _NoListener:
    def connected(self, info: ConnectionInfo) -> None:
        pass

    def writable(self) -> None:
        pass


_NO_LISTENER = _NoListener()


class Session:
    def __init__(self, config: MQTTConfig, ssl_context: Optional[ssl.SSLContext],
                 listener: SessionListener = _NO_LISTENER, rng: Optional[random.Random] = None,
                 online: bytes = ONLINE) -> None:
        self._listener = listener
        self._rng = rng or random.Random()
        self._subscriptions = Subscriptions()
        # Taken while the connection is replaced, so a subscribe() lands on one of the two.
        self._lock = threading.Lock()
        self._connection = Connection(config, ssl_context, listener, self._subscriptions, online, False, self._rng)

    # -- life -----------------------------------------------------------------------------

    def listen(self, listener: SessionListener) -> None:
        """The one object told of CONNACKs and network events (before start(): the daemon wires
        the session first, then what listens to it)."""
        self._listener = listener
        self._connection.listener = listener

    def start(self) -> None:
        self._connection.start()

    def stop(self, timeout: float) -> None:
        """Publish offline, disconnect, and wait for the network thread, all within `timeout`."""
        self._connection.stop(timeout)

    def reconnect(self, config: MQTTConfig, ssl_context: Optional[ssl.SSLContext], online: bytes,
                  timeout: float) -> None:
        """A reload changed the broker section or the certificate files: the current connection
        goes offline and disconnects (within `timeout`), and a new one with `config` starts.

        The broker-side session is handed on when it is the same client at the same broker: a
        reload is not a new process, and must not start clean. What the old connection had in
        flight is not sent by the new one: the caller puts it back in the spool."""
        old = self._connection
        old.stop(timeout)
        was = old.config
        same = (config.host, config.port, config.client_id) == (was.host, was.port, was.client_id)
        # Built under the lock subscribe() takes: every filter is routed on the new client.
        with self._lock:
            new = Connection(config, ssl_context, self._listener, self._subscriptions, online,
                             same and old.state.had_connack, self._rng)
            self._connection = new
        new.start()

    # -- what the connection is doing ------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connection.state.connected

    def wait_connected(self, timeout: float) -> bool:
        return self._connection.state.wait_connected(timeout)

    def connection_info(self) -> Optional[ConnectionInfo]:
        """What the live connection negotiated; None while disconnected."""
        return self._connection.info()

    @property
    def problem(self) -> Optional[str]:
        """Why the session is not connected, in plain words; None when all is well."""
        return self._connection.state.problem

    @property
    def connected_since(self) -> Optional[float]:
        return self._connection.state.connected_since

    @property
    def disconnected_since(self) -> Optional[float]:
        return self._connection.state.disconnected_since

    @property
    def reconnects(self) -> int:
        return self._connection.state.reconnects

    @property
    def broker(self) -> str:
        """The broker in use (or being tried), as host:port."""
        return self._connection.broker

    @property
    def last_alive(self) -> float:
        """When the network thread last showed progress (monotonic): the watchdog's evidence
        (agent/mqtt/socket_io.Liveness)."""
        return self._connection.io_liveness.last_alive

    # -- publishing ------------------------------------------------------------------------

    def defer_writes(self, on: bool) -> None:
        """While on, packets this thread publishes are written by its flush(), which it calls
        right before it sleeps: the PUBACK then finds it asleep, and the network thread does not
        wake into a GIL held by the publisher (one wake-up per reading, not two). Off, flushes."""
        self._connection.io.defer_writes(on)

    def flush(self) -> None:
        """Write the packets deferred by this thread's publishes (see defer_writes); cheap when none."""
        self._connection.io.flush()

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False,
                on_ack: Optional[Callable[[], None]] = None, content_type: str = JSON,
                on_refused: Optional[Callable[[], None]] = None) -> bool:
        """False if paho did not take the message; `on_ack` runs on PUBACK (QoS 1) or when sent (QoS 0).

        `on_refused` runs instead when the broker refuses the message (an MQTT 5 PUBACK with a
        failure code, or the connection closed right after it twice: agent.mqtt.refusals); without
        it, `on_ack` does. A refused message is not sent again.

        On MQTT 5 the message carries `content_type` and, unless it is the retained status,
        mqtt.message_expiry."""
        connection = self._connection
        properties = connection.properties.get(PacketTypes.PUBLISH, content_type, expires=not retain)
        info = connection.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        # QoS 1 messages stay in paho's store even when the connection is down (NO_CONN):
        # paho sends them again after the next CONNACK, so they are taken.
        taken = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN)
        if taken and qos > 0:
            connection.outstanding.sent(info.mid, topic, on_ack, on_refused)
        elif taken and on_ack is not None:
            on_ack()
        return taken

    def reply(self, topic: str, payload: bytes, correlation: Optional[bytes] = None) -> bool:
        """A QoS 1, not retained answer to a request; `correlation` is the request's MQTT 5
        CorrelationData, echoed back (only a v5 request can carry one)."""
        connection = self._connection
        properties = None
        if correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation
        info = connection.client.publish(topic, payload, qos=1, retain=False, properties=properties)
        taken = info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
        if taken:
            connection.outstanding.sent(info.mid, topic)
        return taken

    def subscribe(self, topic_filter: str, qos: int, on_message: OnMessage) -> None:
        """Deliver messages matching `topic_filter` to `on_message`, now and after every reconnect
        (with a clean session the broker forgets subscriptions at each disconnect)."""
        with self._lock:
            connection = self._connection
            self._subscriptions.add(connection.client, topic_filter, qos, on_message,
                                    connected=lambda: connection.state.connected)
