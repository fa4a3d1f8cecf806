"""Which broker the session talks to, of mqtt.hosts (issue 19): the first that answers, the next one
when a connection is lost or an attempt fails, and back to the first (preferred) one when it
answers again. The session asks; this class owns the position and the failback clock.

Failback, as chosen here (neither Telegraf's MQTT output nor the AWS IoT Device SDK moves back at
all: they stay on whichever server works): every mqtt.failback seconds (default 300) while on
another broker, the session checks the preferred one with a TCP connection and TLS handshake (no
MQTT CONNECT, which would push our own live session off if both gateways bridge to one cluster)
and, when it answers, moves back between two acknowledged messages."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Callable, Optional, Tuple

from agent.mqtt.broker_probe import open_connection

Address = Tuple[str, int]
# A failback check must not hold the network thread long: a preferred gateway whose packets a
# firewall drops would otherwise stall keepalives and acknowledgements for the OS's connect timeout.
CHECK_TIMEOUT = 3.0


def describe(address: Address) -> str:
    host, port = address
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


class BrokerList:
    def __init__(self, hosts: Tuple[Address, ...], failback: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not hosts:
            raise ValueError("no broker to connect to")
        self._hosts = hosts
        self._failback = failback
        self._clock = clock
        self._index = 0
        self._next_check: Optional[float] = None
        # Failback checks put off because messages awaited their PUBACK.
        self._waits = 0

    @property
    def current(self) -> Address:
        return self._hosts[self._index]

    @property
    def preferred(self) -> Address:
        return self._hosts[0]

    @property
    def several(self) -> bool:
        return len(self._hosts) > 1

    def advance(self) -> bool:
        """Move to the next broker; True when that starts a new round (back at the preferred one),
        which is when the caller backs off: within a round the next broker is tried at once."""
        self._index = (self._index + 1) % len(self._hosts)
        self._next_check = None
        return self._index == 0

    def connected(self) -> None:
        """A CONNACK from the current broker: start the failback clock if it is not the preferred one."""
        self._next_check = (self._clock() + self._failback) if self._index and self._failback > 0 else None

    def failback_due(self) -> Optional[float]:
        """When (monotonic) the preferred broker is next to be checked; None: not on the way back."""
        return self._next_check

    def postpone(self, seconds: float) -> None:
        """Check a little later (messages are awaiting their PUBACK right now)."""
        if self._next_check is not None:
            self._next_check = self._clock() + seconds

    def check_due(self, awaiting: bool) -> bool:
        """On another broker, failback due, and no message awaiting its PUBACK (a move then costs
        no duplicate): time to check the preferred one."""
        due = self._next_check
        if due is None or self._clock() < due:
            return False
        if awaiting:
            # A PUBACK is usually milliseconds away; a board that is never idle moves anyway, by
            # QoS 1's rule (the unacknowledged are sent again to the preferred broker).
            self.postpone(0.2)
            self._waits += 1
            if self._waits < 25:
                return False
        self._waits = 0
        return True

    def preferred_answers(self, ctx: Optional[ssl.SSLContext]) -> bool:
        """Check the preferred broker now (TCP, then the TLS handshake with its own name checked);
        the next check is a failback interval later whatever the answer."""
        self._next_check = self._clock() + self._failback
        host, port = self._hosts[0]
        try:
            sock = open_connection(host, port, ctx, CHECK_TIMEOUT)
        except (OSError, ValueError):
            return False
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        return True

    def use_preferred(self) -> None:
        self._index = 0
        self._next_check = None
