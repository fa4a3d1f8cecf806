"""sd_notify: the exact datagrams systemd would receive, from the built-in sender and from systemd-python."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, List

import pytest

from agent.service import notify
from agent.service.notify import Notifier

BACKENDS = ["builtin", "systemd-python"]


def _require_binding() -> None:
    try:
        import systemd.daemon  # noqa: F401
    except ImportError:
        pytest.fail("systemd-python is not installed, so its sd_notify path cannot be tested: "
                    "apt-get install libsystemd-dev pkg-config gcc, then pip install 'edison-agent[systemd]' "
                    "(see docs/operations.md)")


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, or a shorter directory when tmp_path would overflow sun_path's 108 bytes."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="ntf") as d:
        yield Path(d)


@pytest.fixture
def listener(short_dir: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short_dir / "notify.sock"))
    sock.settimeout(2)
    yield sock
    sock.close()


def _notifier(backend: str, address: str, monkeypatch: pytest.MonkeyPatch) -> Notifier:
    """A notifier from the environment, as the daemon makes it, using `backend`."""
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    if backend == "systemd-python":
        _require_binding()
    else:
        # An image without the binding: its import fails.
        monkeypatch.setitem(sys.modules, "systemd.daemon", None)
    notifier = Notifier.from_environment()
    assert notifier.enabled
    assert notifier.backend == backend
    return notifier


def _received(sock: socket.socket) -> List[bytes]:
    """Every datagram waiting on `sock`."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(65536))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_call_sends_its_datagram(backend, listener, monkeypatch):
    n = _notifier(backend, listener.getsockname(), monkeypatch)

    n.ready("starting: 3 sensors")
    assert listener.recv(4096) == b"READY=1\nSTATUS=starting: 3 sensors"
    n.status("connected since 10:00:00, 12 sent, spool 0")
    assert listener.recv(4096) == b"STATUS=connected since 10:00:00, 12 sent, spool 0"
    n.watchdog()
    assert listener.recv(4096) == b"WATCHDOG=1"
    before = time.monotonic_ns() // 1000
    n.reloading()
    datagram = listener.recv(4096)
    after = time.monotonic_ns() // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", datagram)
    assert match, datagram
    assert before <= int(match.group(1)) <= after
    n.stopping("stopping: SIGTERM")
    assert listener.recv(4096) == b"STOPPING=1\nSTATUS=stopping: SIGTERM"
    assert _received(listener) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unchanged_status_is_not_sent_again(backend, listener, monkeypatch):
    n = _notifier(backend, listener.getsockname(), monkeypatch)
    n.ready("connected")
    n.status("connected")
    n.status("disconnected since 10:00:05")
    n.status("disconnected since 10:00:05")
    n.stopping("stopping")
    n.status("stopping")
    assert _received(listener) == [b"READY=1\nSTATUS=connected", b"STATUS=disconnected since 10:00:05",
                                   b"STOPPING=1\nSTATUS=stopping"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_watchdog_ping_carries_a_changed_status_in_the_same_datagram(backend, listener, monkeypatch):
    n = _notifier(backend, listener.getsockname(), monkeypatch)
    n.watchdog("connected since 10:00:00; 12 sent; spool 0")
    n.watchdog("connected since 10:00:00; 12 sent; spool 0")
    n.status("connected since 10:00:00; 12 sent; spool 0")
    n.watchdog("connected since 10:00:00; 13 sent; spool 0")
    # One send per ping: the idle agent's main thread pays for one, not two.
    assert _received(listener) == [b"WATCHDOG=1\nSTATUS=connected since 10:00:00; 12 sent; spool 0",
                                   b"WATCHDOG=1",
                                   b"WATCHDOG=1\nSTATUS=connected since 10:00:00; 13 sent; spool 0"]


def test_a_status_stays_on_one_line(listener, monkeypatch):
    n = _notifier("builtin", listener.getsockname(), monkeypatch)
    n.status("last error: broker said\nnot authorized")
    # A newline would have started a new assignment.
    assert listener.recv(4096) == b"STATUS=last error: broker said not authorized"


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_abstract_socket(backend, monkeypatch):
    name = "edison-agent-test-%s" % uuid.uuid4().hex
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        n = _notifier(backend, "@" + name, monkeypatch)
        n.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_an_explicit_environment_uses_the_builtin_sender(listener):
    # systemd-python reads $NOTIFY_SOCKET from the process itself, so a mapping naming another
    # socket must not go through it.
    n = Notifier.from_environment({"NOTIFY_SOCKET": listener.getsockname()})
    assert n.backend == "builtin"
    n.watchdog()
    assert listener.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("environ, expected", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "500000"}, 0.25),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "thirty"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, None),
    ({}, None),
], ids=["usec", "our-pid", "other-pid", "short", "zero", "garbage", "bad-pid", "unset"])
def test_watchdog_interval(environ, expected, short_dir):
    n = Notifier.from_environment(dict(environ, NOTIFY_SOCKET=str(short_dir / "notify.sock")))
    assert n.watchdog_interval == expected
    assert notify.watchdog_interval(environ) == expected


def test_without_notify_socket_everything_is_a_no_op(listener, monkeypatch, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier.from_environment({"WATCHDOG_USEC": "30000000"})
    assert not n.enabled
    assert n.backend == "none"
    assert n.watchdog_interval is None  # nothing to ping
    with caplog.at_level(logging.DEBUG, logger="agent.service.notify"):
        n.ready("up")
        n.status("connected")
        n.watchdog()
        n.reloading()
        n.stopping("bye")
    assert _received(listener) == []
    assert caplog.records == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dead_socket_never_raises_and_is_logged_once(backend, short_dir, monkeypatch, caplog):
    n = _notifier(backend, str(short_dir / "gone.sock"), monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="agent.service.notify"):
        n.ready("up")
        n.watchdog()
        n.status("connected")
        n.stopping("bye")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "gone.sock" in warnings[0].getMessage()


def test_a_socket_nobody_reads_any_more_never_raises(short_dir, monkeypatch):
    path = short_dir / "closed.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.close()  # the file stays; sending to it is refused
    n = _notifier("builtin", str(path), monkeypatch)
    n.ready("up")
    n.watchdog()


def test_a_relative_notify_socket_is_refused(caplog):
    with caplog.at_level(logging.WARNING, logger="agent.service.notify"):
        n = Notifier.from_environment({"NOTIFY_SOCKET": "notify.sock"})
    assert not n.enabled
    assert "NOTIFY_SOCKET=notify.sock" in caplog.text
