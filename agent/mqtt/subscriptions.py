"""The session's subscriptions: made again after every CONNACK (a clean session forgets them at
each disconnect), outliving a reload's new connection, and the broker's SUBACK read."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Set, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

# (topic, payload, properties): properties are paho's MQTT 5 properties, or None on 3.1.1.
# Runs on the network thread: it must hand the message on, never block.
OnMessage = Callable[[str, bytes, Any], None]


class Subscriptions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._filters: Dict[str, Tuple[int, OnMessage]] = {}
        # SUBSCRIBE packet id -> the filters it carried, until its SUBACK.
        self._pending: Dict[int, List[str]] = {}
        # "subscribed to" is said once per session, not at every reconnect.
        self._announced: Set[str] = set()

    def install(self, client: mqtt.Client) -> None:
        """Route every filter's messages on a new client (before it connects)."""
        with self._lock:
            filters = list(self._filters.items())
        for topic_filter, (_, on_message) in filters:
            client.message_callback_add(topic_filter, _deliver(on_message))

    def add(self, client: mqtt.Client, topic_filter: str, qos: int, on_message: OnMessage,
            connected: Callable[[], bool]) -> None:
        # Outside our lock: paho holds its callback lock while it runs on_connect, which takes ours.
        client.message_callback_add(topic_filter, _deliver(on_message))
        with self._lock:
            self._filters[topic_filter] = (qos, on_message)
            if connected():
                self._send(client, topic_filter, qos)

    def resend(self, client: mqtt.Client, then: Callable[[], None]) -> None:
        """After a CONNACK: every filter again, then `then()` under the same lock, so a filter
        added meanwhile is sent by one side or the other."""
        with self._lock:
            for topic_filter, (qos, _) in self._filters.items():
                self._send(client, topic_filter, qos)
            then()

    def acknowledged(self, mid: int, reason_codes: Any, logger: Any) -> None:
        with self._lock:
            filters = self._pending.pop(mid, [])
        for topic_filter, code in zip(filters, reason_codes):
            if code.is_failure:
                # Nothing will arrive on it: the broker's ACL is the usual reason.
                logger.error("the broker refused the subscription to %s (%s): check its ACL "
                             "(edison-agent pki acl)", topic_filter, code)
            elif topic_filter not in self._announced:
                self._announced.add(topic_filter)
                logger.info("subscribed to %s", topic_filter)

    def _send(self, client: mqtt.Client, topic_filter: str, qos: int) -> None:
        rc, mid = client.subscribe(topic_filter, qos)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._pending[mid] = [topic_filter]


def _deliver(on_message: OnMessage) -> Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]:
    def deliver(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        on_message(msg.topic, bytes(msg.payload), getattr(msg, "properties", None))

    return deliver

