"""What a session has published and the broker has not acknowledged yet, and the messages it refuses.

A broker refuses a message in one of two ways. With MQTT 5 it answers with a PUBACK whose
reason code is 0x80 or more (Not authorized, Topic Name invalid, ...). MQTT 3.1.1 has no such
code: a broker that will not take a message (a topic with U+0000, a publish its ACL refuses on
AWS IoT, a packet over its size limit) closes the connection. paho keeps the message and writes
it again first after every reconnect, and the broker closes again: left alone, one such message
ends the session's usefulness until the agent restarts.

The rule here: a connection that reached CONNACK and then was closed from the broker's side
while a message written on it was the oldest one not acknowledged is one strike against that
message (paho writes in order and the broker handles packets in order, so that is the one it
stopped at). Two strikes in a row and the message is dropped at the next CONNACK, before paho
can write it again, with one log line naming its topic. A connection that ends any other way
(a keepalive timeout: the link, not the broker; a stop of ours) or a message at the head that
was not written before clears the strikes. A broker restart costs nothing: the message goes
again right after the CONNACK and is acknowledged.

The reconnect backoff grows across connections that do not last (STABLE_AFTER): a broker that
accepts the connection and then closes it must not be hammered at min_delay.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

Callback = Callable[[], None]

# Closes in a row, each with the same oldest unacknowledged message, before that message is dropped.
STRIKES = 2
# A connection that lasted this long was a working one: the next reconnect starts at min_delay again.
# The AWS IoT Device SDK's "minimum connected time" to reset its backoff is the same 20 s.
STABLE_AFTER = 20.0
# Topics in log lines: a topic can hold a newline or be 65,535 characters long.
_SHOWN = 120


def shown(topic: str) -> str:
    """A topic for a log line: quoted and escaped (repr), cut to a readable length."""
    text = repr(topic)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "...(%d characters)" % len(topic)


class Outstanding:
    """The session's QoS 1 messages from publish to PUBACK, their callbacks, and the strikes.

    `sent` runs on the publishing thread, the rest on the network thread; one lock, never held
    while paho or a callback runs.
    """

    def __init__(self, logger: Any = log) -> None:
        self._log = logger
        self._lock = threading.Lock()
        # mid -> (topic, on_ack, on_refused) for every QoS 1 message paho holds for us.
        self._waiting: Dict[int, Tuple[str, Optional[Callback], Optional[Callback]]] = {}
        # A PUBACK can arrive before publish() returned the mid to its caller: mid -> refused.
        self._early: Dict[int, bool] = {}
        self._closed_by_broker = False
        self._suspect: Optional[Tuple[str, bytes]] = None
        self._strikes = 0
        # Topics whose messages the broker refused (PUBACK >= 0x80), with the count since the first.
        self._refused_topics: Dict[str, int] = {}
        self._connected_at: Optional[float] = None
        self._stable = True
        self.dropped = 0

    def sent(self, mid: int, topic: str, on_ack: Optional[Callback] = None,
             on_refused: Optional[Callback] = None) -> None:
        """paho took a QoS 1 message (written or queued) under `mid`."""
        with self._lock:
            refused = self._early.pop(mid, None)
            if refused is None:
                self._waiting[mid] = (topic, on_ack, on_refused)
                return
        _finish(refused, on_ack, on_refused)

    def puback(self, mid: int, reason_code: Any) -> None:
        """paho's on_publish: the broker acknowledged `mid`, or (MQTT 5, code >= 0x80) refused it."""
        refused = bool(getattr(reason_code, "is_failure", False))
        with self._lock:
            entry = self._waiting.pop(mid, None)
            if entry is None:
                self._early[mid] = refused
                return
            topic, on_ack, on_refused = entry
            count = self._refused_topics.get(topic)
            if refused:
                self._refused_topics[topic] = (count or 0) + 1
            elif count is not None:
                del self._refused_topics[topic]
        if refused and count is None:
            # Once per topic until one is accepted again: a refused telemetry topic must not flood the journal.
            self._log.error("the broker refused a message to %s (%s): dropped, not sent again; it probably does "
                            "not allow this topic (ACL, topic permission)", shown(topic), reason_code)
        elif not refused and count is not None:
            self._log.info("the broker accepts messages to %s again (%d refused)", shown(topic), count)
        _finish(refused, on_ack, on_refused)

    @property
    def awaiting(self) -> bool:
        """Whether any message still waits for its PUBACK (a move to another broker would then send it twice)."""
        with self._lock:
            return bool(self._waiting)

    # -- connections (network thread) ----------------------------------------------------------

    def lost(self, by_broker: bool) -> None:
        """A connection that had reached CONNACK ended; `by_broker`: closed from the broker's side."""
        now = time.monotonic()
        self._stable = self._connected_at is None or now - self._connected_at >= STABLE_AFTER
        self._connected_at = None
        self._closed_by_broker = by_broker
        if not by_broker:
            self._suspect, self._strikes = None, 0

    @property
    def stable(self) -> bool:
        """Whether the last connection lasted STABLE_AFTER: then the backoff starts from the beginning."""
        return self._stable

    def connected(self, client: Any) -> None:
        """At CONNACK, before paho writes its unacknowledged messages again: count a strike, and
        drop the message that has two (then the others are published again, in order)."""
        self._connected_at = time.monotonic()
        if not self._closed_by_broker:
            self._suspect, self._strikes = None, 0
            return
        self._closed_by_broker = False
        # paho's public way to take its unacknowledged messages back (its docs: for a message
        # that "would kick the client, causing an infinite reconnection loop").
        messages: List[Any] = client.drop_out_messages()
        head = messages[0] if messages else None
        # dup: paho marks a QoS 1 message written on an earlier connection and not acknowledged.
        if head is None or not head.dup:
            self._suspect, self._strikes = None, 0
        else:
            key = (head.topic, bytes(head.payload))
            self._strikes = self._strikes + 1 if key == self._suspect else 1
            self._suspect = key
            if self._strikes >= STRIKES:
                self._suspect, self._strikes = None, 0
                messages.pop(0)
                self._drop(head)
            elif self._strikes == 1:
                self._log.warning("the broker closed the connection while a message to %s was not acknowledged; "
                                  "if it does so again, that message is dropped", shown(head.topic))
        for message in messages:
            with self._lock:
                entry = self._waiting.pop(message.mid, None)
            info = client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain,
                                  properties=message.properties)
            if entry is not None and message.qos > 0:
                self.sent(info.mid, *entry)

    def _drop(self, message: Any) -> None:
        with self._lock:
            entry = self._waiting.pop(message.mid, None)
        self.dropped += 1
        self._log.error("dropped a message to %s: the broker closed the connection right after it %d times in "
                        "a row (it probably refuses it: ACL, topic permission or an invalid topic)",
                        shown(message.topic), STRIKES)
        if entry is not None:
            _finish(True, entry[1], entry[2])


def _finish(refused: bool, on_ack: Optional[Callback], on_refused: Optional[Callback]) -> None:
    """A message is over: acknowledged, or refused (then on_refused, or on_ack if there is none:
    whoever waits for it must not wait forever)."""
    callback = on_refused if refused and on_refused is not None else on_ack
    if callback is not None:
        callback()
