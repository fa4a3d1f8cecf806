"""paho on the socket, one thread at a time: the network thread's select(), its wake-up, and the
deferred-write trick that lets a publishing thread write its own packet.

Held by whichever thread runs paho on the socket (read, write, keepalive, connect), the lock
keeps two threads off one SSL object; it is never held across select().
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from agent.mqtt import paho_shim

# A publishing thread writes its packet itself only after this long without one (see _write_now).
QUIET = 0.5


class Liveness:
    """The watchdog's evidence: the deadline of the wait the network thread is in (None while it
    works) and when it last started work, monotonic. One tuple, replaced whole, so the main
    thread never reads half of it."""

    def __init__(self) -> None:
        self._alive: Tuple[Optional[float], float] = (None, time.monotonic())

    def working(self) -> None:
        self._alive = (None, time.monotonic())

    def waiting_until(self, deadline: float) -> None:
        self._alive = (deadline, self._alive[1])

    @property
    def last_alive(self) -> float:
        """When the network thread last showed progress (monotonic).

        Blocked in select() or a backoff with a deadline still ahead is progress: that is now.
        Busy, it is when the work began; still blocked past the deadline, the deadline. So the
        thread needs no timed wake-up of its own to look alive.
        """
        until, since = self._alive
        return since if until is None else min(time.monotonic(), until)


class SocketIO:
    """One paho client's socket: who may use it, and who writes a queued packet."""

    def __init__(self, client: mqtt.Client, liveness: Liveness) -> None:
        self._client = client
        self._liveness = liveness
        self._lock = threading.Lock()
        # Our select()'s wake-up: a byte from a thread that queued a packet, or from stop().
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        # Publishers set _wake_sent and the network thread clears it, so both under this lock, as is
        # _last_handoff (any publishing thread). Re-entrant: stop() may wake from a signal handler
        # on a thread that is inside wake() already (then the outer call sends the byte).
        self._wake_lock = threading.RLock()
        self._wake_sent = False
        self._last_handoff = 0.0
        self._network_thread: Optional[int] = None
        # The thread whose publishes wait for its flush() (the sampler's), and whether one does:
        # _flush_due is set by paho's hook on that very thread and cleared by its flush(), so it
        # never crosses threads.
        self._deferring: Optional[int] = None
        self._flush_due = False
        # With a write-registration hook set, paho's publish() only queues the packet and calls
        # the hook; without one it would write to the TLS socket from the publishing thread
        # even while the network thread reads it. The hook writes under the lock instead.
        client.on_socket_register_write = self._write_from_other_thread

    def open(self) -> None:
        """On the network thread, before its first connect."""
        self._network_thread = threading.get_ident()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def close(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    @contextmanager
    def exclusive(self) -> Iterator[mqtt.Client]:
        """paho's client, for a call that touches the socket (connect, disconnect)."""
        with self._lock:
            yield self._client

    def wake(self) -> None:
        """Make the network thread's select() return now."""
        sock = self._wake_w
        if sock is None:
            return
        with self._wake_lock:
            if self._wake_sent:
                return
            self._wake_sent = True
        try:
            sock.send(b"\0")
        except OSError:
            pass  # the buffer is full (a wake-up is pending anyway) or the thread has ended

    def pass_once(self, until: float) -> MQTTErrorCode:
        """One select() over paho's socket and our wake-up socket, at most until `until`
        (monotonic), then paho's read, write and keepalive steps for whatever is ready."""
        client = self._client
        wake = self._wake_r
        with self._lock:
            sock = client.socket()
            if not isinstance(sock, socket.socket) or wake is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            # Bytes OpenSSL has already read from the socket do not make it readable again.
            pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
            # Write interest only while paho has bytes queued: a writable socket would wake us at once.
            writing = [sock] if client.want_write() else []
        timeout = 0.0 if pending else max(0.0, until - time.monotonic())
        self._liveness.waiting_until(until)
        try:
            readable, _, _ = select.select([sock, wake], writing, [], timeout)
        except (OSError, ValueError):
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        finally:
            self._liveness.working()
        if wake in readable:
            # Cleared before reading, so a byte sent meanwhile is either read now or wakes the next select().
            with self._wake_lock:
                self._wake_sent = False
            try:
                wake.recv(4096)
            except BlockingIOError:
                pass
        with self._lock:
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
        """paho's loop_write(), then the time of the write where its keepalive looks (under the lock)."""
        client = self._client
        rc = client.loop_write()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and not client.want_write():
            paho_shim.note_packet_sent(client)
        return rc

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

    def _write_from_other_thread(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        """paho's hook when a packet is queued (and the socket was not registered for writing yet).

        On the network thread the next select() sees want_write() anyway. On a thread that
        defers its writes, its flush() writes them. On any other thread (a sensor worker, the
        batch timer, stop()) the packet is written right here when the socket is free, so a
        reading costs the network thread one wake-up (its PUBACK), not two.
        """
        ident = threading.get_ident()
        if ident == self._network_thread:
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
        with self._wake_lock:
            quiet, self._last_handoff = now - self._last_handoff >= QUIET, now
        if quiet and self._lock.acquire(blocking=False):
            try:
                rc = self._loop_write()
                done = rc == MQTTErrorCode.MQTT_ERR_SUCCESS and client.socket() is not None \
                    and not client.want_write()
            finally:
                self._lock.release()
            if done:
                return
        # Busy (the network thread is on the socket), left over (socket buffer full) or failed
        # (paho closed the socket under our select()): the network thread takes it from here.
        self.wake()


def set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Nagle plus delayed ACKs costs ~40 ms a round trip on small MQTT packets.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
