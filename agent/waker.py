"""The agent's one way to wake a thread at a deadline: set, moved and cleared from any thread
(or a signal handler) without waking the thread that waits.

Three threads sleep on one: the sampler's schedule (until the next sensor is due, or a ring: a
command, a signal), the spool's committer (until a commit is due) and the uplink's partial
batch (until batch.max_delay). The committer shows why it is a kernel timer: it must write a
change at most `commit_interval` after it happened, but with the broker up almost every change
is acknowledged before then and needs no write at all. A timed wait would have to be woken to
learn its new deadline (one wake-up at the append) and would wake again at the old one for
nothing (one more); on an idle agent those were most of its wake-ups. On Linux a timerfd lets
the appending thread arm the deadline and the acknowledging thread disarm it, each with one
system call, while the waiter sleeps until the deadline really arrives. Elsewhere (or if the C
library has no timerfd) a Condition does the same job with the old wake-ups.

Signal-safe: `ring()` and `set()` are one system call each with the kernel timer, and take a
re-entrant lock without it (a handler runs on the very thread that may hold that lock).
"""
from __future__ import annotations

import os
import select
import threading
import time
from typing import Callable, Optional, Tuple

# <sys/timerfd.h> and <time.h> on Linux; time.monotonic() is CLOCK_MONOTONIC there.
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1

# (create() -> fd, settime(fd, absolute deadline or 0.0 to disarm)); None where there is no timerfd.
_TimerFD = Optional[Tuple[Callable[[], int], Callable[[int, float], None]]]


def _timerfd() -> _TimerFD:
    if time.get_clock_info("monotonic").implementation != "clock_gettime(CLOCK_MONOTONIC)":
        return None
    create = getattr(os, "timerfd_create", None)
    settime = getattr(os, "timerfd_settime", None)
    if create is not None and settime is not None:  # Python 3.13 and later
        return (lambda: int(create(_CLOCK_MONOTONIC, flags=_TFD_NONBLOCK | _TFD_CLOEXEC)),
                lambda fd, when: settime(fd, flags=_TFD_TIMER_ABSTIME, initial=when))
    return _timerfd_ctypes()


def _timerfd_ctypes() -> _TimerFD:
    # Imported only here: ctypes costs ~0.3 MiB of resident memory.
    import ctypes

    class Timespec(ctypes.Structure):
        # C long, not a fixed 64 bits: the C library's plain `timerfd_settime` symbol takes the
        # platform's long-sized time_t (32 bits on the i386 Edison; a 64-bit time_t build calls
        # __timerfd_settime64 instead, through its header). `make test-i386` fails with int64 here.
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    class Itimerspec(ctypes.Structure):
        _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

    try:
        # The running program's own symbols include the C library's.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(Itimerspec), ctypes.c_void_p]
    except (OSError, AttributeError):
        return None

    def create() -> int:
        fd = int(libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create: %s" % os.strerror(ctypes.get_errno()))
        return fd

    def settime(fd: int, when: float) -> None:
        spec = Itimerspec()
        spec.it_value.tv_sec = int(when)
        spec.it_value.tv_nsec = int((when - int(when)) * 1e9)
        if libc.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime: %s" % os.strerror(ctypes.get_errno()))

    return create, settime


class Waker:
    """`wait()` returns when the deadline set by `set()` arrives, or at `ring()`; call `set` from any thread."""

    def __init__(self) -> None:
        timerfd: _TimerFD = None
        self._fd = -1
        try:
            timerfd = _timerfd()
            if timerfd is not None:
                self._fd = timerfd[0]()
        except OSError:
            timerfd = None
        self._settime = timerfd[1] if timerfd is not None else None
        self.kernel_timer = self._fd >= 0
        self._ring_r, self._ring_w = os.pipe() if self.kernel_timer else (-1, -1)
        if self.kernel_timer:
            os.set_blocking(self._ring_r, False)
            os.set_blocking(self._ring_w, False)
        # Re-entrant: ring() may run in a signal handler on the thread that holds it.
        self._cond = threading.Condition(threading.RLock())
        self._deadline: Optional[float] = None
        self._rung = False

    def set(self, deadline: Optional[float]) -> None:
        """Wake the waiter at `deadline` (time.monotonic()), or never when None; a deadline past rings at once."""
        if self.kernel_timer:
            assert self._settime is not None
            # A zero deadline would disarm the timer: one at 0 is simply past.
            self._settime(self._fd, 0.0 if deadline is None else max(deadline, 1e-9))
            return
        with self._cond:
            earlier = deadline is not None and (self._deadline is None or deadline < self._deadline)
            self._deadline = deadline
            if earlier:
                self._cond.notify()

    def ring(self) -> None:
        """Wake the waiter now."""
        if self.kernel_timer:
            try:
                os.write(self._ring_w, b"\0")
            except BlockingIOError:
                pass  # a ring is already pending
            return
        with self._cond:
            self._rung = True
            self._cond.notify()

    def wait(self) -> None:
        """Until the deadline or a ring (it may return early: the caller checks what is due)."""
        if self.kernel_timer:
            ready, _, _ = select.select([self._fd, self._ring_r], [], [])
            # Only what is ready: a ring that comes after the select stays for the next wait.
            for fd in ready:
                try:
                    os.read(fd, 64)
                except BlockingIOError:
                    pass
            return
        with self._cond:
            while not self._rung:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._rung = False
            self._deadline = None

    def close(self) -> None:
        if self.kernel_timer:
            for fd in (self._fd, self._ring_r, self._ring_w):
                os.close(fd)
            self.kernel_timer = False
