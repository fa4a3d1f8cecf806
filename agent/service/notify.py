"""Telling systemd how the daemon is doing: sd_notify(3), with or without systemd-python.

The protocol is one AF_UNIX datagram of newline-separated KEY=VALUE assignments sent to the
socket named by $NOTIFY_SOCKET (a path, or '@name' for the abstract namespace). systemd-python's
`systemd.daemon.notify` is used where it imports; elsewhere (images without the binding) a
built-in sender does the same. Sending never raises: a failure is logged once and the daemon
goes on, because a lost status line must never take the telemetry down with it.

Versions (sd_notify(3)): READY=1, STATUS= and WATCHDOG=1 are understood by every systemd
the agent targets, the Edison's 216 included; STOPPING=1 and RELOADING=1 arrived in 217 and
MONOTONIC_USEC= in 253. Unknown assignments are ignored by older managers, so they are always
sent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping, Optional

log = logging.getLogger(__name__)

# A manager that does not drain its socket must not hang the thread that reports to it.
SEND_TIMEOUT = 2.0

Sender = Callable[[str], None]


class Notifier:
    """sd_notify for the daemon: `ready`, `status`, `watchdog`, `stopping`, `reloading`."""

    def __init__(self, address: Optional[str], watchdog_interval: Optional[float] = None,
                 sender: Optional[Sender] = None, backend: str = "builtin") -> None:
        """`address` is $NOTIFY_SOCKET as systemd sets it; None makes every call a no-op."""
        self.address = address
        self.enabled = address is not None
        self.watchdog_interval = watchdog_interval if self.enabled else None
        self.backend = backend if self.enabled else "none"
        self._sender: Sender = sender or self._send_builtin
        self._lock = threading.Lock()
        self._last_status: Optional[str] = None
        self._failure_logged = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd asked for, or a no-op one when $NOTIFY_SOCKET is unset."""
        address = environ.get("NOTIFY_SOCKET") or None
        if address is None:
            return cls(None)
        if not address.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%s is neither a path nor an abstract socket: not notifying systemd",
                        address)
            return cls(None)
        interval = watchdog_interval(environ)
        binding = _binding_sender()
        # The binding reads $NOTIFY_SOCKET from the process environment itself: use it only when
        # that is the socket we were given.
        if binding is not None and os.environ.get("NOTIFY_SOCKET") == address:
            return cls(address, interval, sender=binding, backend="systemd-python")
        return cls(address, interval)

    def ready(self, status: str) -> None:
        """Start-up (or a reload) is complete: READY=1 with the current status line."""
        status = _one_line(status)
        with self._lock:
            self._last_status = status
        self._send("READY=1\nSTATUS=%s" % status)

    def status(self, text: str) -> None:
        """The line `systemctl status` shows; nothing is sent when it has not changed."""
        changed = self._changed_status(text)
        if changed is not None:
            self._send("STATUS=%s" % changed)

    def watchdog(self, status: Optional[str] = None) -> None:
        """The keep-alive ping: call every `watchdog_interval` seconds while all is well. A
        status line given with it goes in the same datagram (if it changed): one send, not two."""
        changed = self._changed_status(status) if status is not None else None
        self._send("WATCHDOG=1" if changed is None else "WATCHDOG=1\nSTATUS=%s" % changed)

    def _changed_status(self, text: str) -> Optional[str]:
        text = _one_line(text)
        with self._lock:
            if text == self._last_status:
                return None
            self._last_status = text
        return text

    def stopping(self, status: str) -> None:
        """Shutdown has begun (SIGTERM): STOPPING=1 with the status line."""
        status = _one_line(status)
        with self._lock:
            self._last_status = status
        self._send("STOPPING=1\nSTATUS=%s" % status)

    def reloading(self) -> None:
        """A reload has begun; `ready()` must follow when it is done (or has been refused)."""
        # CLOCK_MONOTONIC in microseconds, which Type=notify-reload (systemd 253+) requires.
        self._send("RELOADING=1\nMONOTONIC_USEC=%d" % (time.monotonic_ns() // 1000))

    def _send(self, state: str) -> None:
        if not self.enabled:
            return
        try:
            self._sender(state)
        except OSError as exc:
            with self._lock:
                first = not self._failure_logged
                self._failure_logged = True
            if first:
                log.warning("cannot notify systemd through %s: %s (further failures are not logged)",
                            self.address, exc)
            else:
                log.debug("cannot notify systemd through %s: %s", self.address, exc)

    def _send_builtin(self, state: str) -> None:
        assert self.address is not None
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(state.encode("utf-8"), target)


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> Optional[float]:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.

    None when the watchdog is off or meant for another process ($WATCHDOG_PID set to a PID that
    is not ours: systemd-python has no helper for this).
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def _binding_sender() -> Optional[Sender]:
    try:
        from systemd.daemon import notify
    except ImportError:
        return None

    def send(state: str) -> None:
        notify(state)

    return send


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the datagram.
    return " ".join(text.splitlines())
