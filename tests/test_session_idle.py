"""The MQTT session's network thread at rest: it sleeps until a real deadline, and the watchdog
can still tell a sleeping thread from a stuck one. Real broker, real TLS, counted by the kernel."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

import pytest
import yaml

from agent.config import schema as config
from agent.mqtt import tls
from agent.mqtt.session import ConnectionInfo, Session
from agent.mqtt.socket_io import QUIET
from agent.service.health import STALL_AFTER, Health
from conftest import Broker, Certs, agent_config


class _Listener:
    """The session's listener; `writable` runs after every network event on its thread."""

    def __init__(self, writable: Callable[[], None]) -> None:
        self._writable = writable

    def connected(self, info: ConnectionInfo) -> None:
        pass

    def writable(self) -> None:
        self._writable()


def _session(certs: Certs, broker: Broker, tmp_path: Path, keepalive: int,
             writable: Callable[[], None] = lambda: None) -> Session:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, broker.port, mqtt={"keepalive": keepalive})))
    cfg = config.load(path)
    assert cfg.mqtt.tls is not None
    session = Session(cfg.mqtt, tls.build_context(cfg.mqtt.tls))
    session.listen(_Listener(writable))
    return session


def _network_threads() -> Set[threading.Thread]:
    # The session names its network thread (as bench/session_wakeups.py finds it).
    return {t for t in threading.enumerate() if t.name == "mqtt-session"}


# Each started session's network thread.
_THREADS: Dict[int, threading.Thread] = {}


@pytest.fixture
def sessions() -> Iterator[List[Session]]:
    started: List[Session] = []
    yield started
    for session in started:
        session.stop(5)


def _wakeups(session: Session) -> int:
    """How often the network thread has blocked: the kernel's count, not ours."""
    native_id = _THREADS[id(session)].native_id
    assert native_id is not None
    with open("/proc/self/task/%d/status" % native_id) as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def _connected_and_settled(session: Session, sessions: List[Session]) -> None:
    before = _network_threads()
    session.start()
    (_THREADS[id(session)],) = _network_threads() - before
    sessions.append(session)
    assert session.wait_connected(15)
    time.sleep(0.5)  # the online status is out and acknowledged; the thread is in select()


def _publish_and_wait(session: Session) -> None:
    acked = threading.Event()
    assert session.publish("edison/thunder10/test", b"x", qos=1, on_ack=acked.set)
    assert acked.wait(10)


def test_an_idle_session_thread_sleeps_until_keepalive_is_due(certs, broker, tmp_path, sessions):
    # keepalive 10: the old loop came round every 2.5 s; the next real deadline is 10 s away.
    session = _session(certs, broker, tmp_path, keepalive=10)
    _connected_and_settled(session, sessions)
    before = _wakeups(session)
    time.sleep(4)
    assert _wakeups(session) == before
    assert session.connected


def test_a_publish_from_another_thread_is_written_there_without_waking_the_network_thread(
        certs, broker, subscriber, tmp_path, sessions):
    session = _session(certs, broker, tmp_path, keepalive=60)
    _connected_and_settled(session, sessions)
    before = _wakeups(session)
    for i in range(4):
        # From this thread, at an idle sensor's pace (over QUIET apart); QoS 0 has no PUBACK
        # to wake anyone.
        assert session.publish("edison/thunder10/test", b"%d" % i, qos=0)
        subscriber.next("edison/thunder10/test", payload=str(i))
        time.sleep(QUIET)
    assert _wakeups(session) == before


def test_a_deferring_thread_s_publishes_are_written_by_its_flush(certs, broker, subscriber, tmp_path, sessions):
    session = _session(certs, broker, tmp_path, keepalive=60)
    _connected_and_settled(session, sessions)
    before = _wakeups(session)
    session.defer_writes(True)
    try:
        assert session.publish("edison/thunder10/test", b"deferred", qos=0)
        # Queued, not written, and nobody woken: the broker has not seen it.
        time.sleep(0.3)
        assert "'edison/thunder10/test'" not in broker.log.read_text(errors="replace")
        assert _wakeups(session) == before
        session.flush()  # as the sampler does right before it sleeps
        subscriber.next("edison/thunder10/test", payload="deferred")
        # The broker's log does name it once written (so its absence above meant something).
        assert "'edison/thunder10/test'" in broker.log.read_text(errors="replace")
    finally:
        session.defer_writes(False)
    assert _wakeups(session) == before


# Wake-ups per acknowledged reading are a cost, not a property: bench/session_wakeups.py
# measures them (a test of "<= 15 for 10 readings" failed on a loaded machine with 23).


def test_keepalive_pings_keep_an_idle_session_up(certs, broker, tmp_path, sessions):
    session = _session(certs, broker, tmp_path, keepalive=5)
    _connected_and_settled(session, sessions)
    before = _wakeups(session)
    time.sleep(9)  # mosquitto drops a client silent for 1.5 x keepalive (7.5 s)
    assert session.connected and session.reconnects == 0 and session.problem is None
    # Per keepalive: one timed wake-up to send PINGREQ, one for PINGRESP.
    assert _wakeups(session) - before <= 6
    _publish_and_wait(session)


def test_a_session_that_publishes_within_keepalive_sends_no_pingreq(certs, broker, tmp_path, sessions):
    session = _session(certs, broker, tmp_path, keepalive=5)
    _connected_and_settled(session, sessions)
    # Readings every 2 s for three keepalive periods: each PUBLISH is the keepalive (MQTT 3.1.1
    # section 3.1.2.10); a PINGREQ would be one more wake-up and two TLS records for nothing.
    for _ in range(8):
        _publish_and_wait(session)
        time.sleep(2)
    assert session.connected and session.reconnects == 0
    assert "Received PINGREQ" not in broker.log.read_text(errors="replace")


def test_stop_wakes_an_idle_session_at_once_and_goes_offline(certs, broker, tmp_path, sessions):
    session = _session(certs, broker, tmp_path, keepalive=60)
    _connected_and_settled(session, sessions)
    sessions.remove(session)
    started = time.monotonic()
    session.stop(5)
    assert time.monotonic() - started < 2
    assert not _THREADS[id(session)].is_alive()
    assert not session.connected


class _Notifier:
    def __init__(self) -> None:
        self.pings = 0

    def watchdog(self, status: Optional[str] = None) -> None:
        self.pings += 1

    def status(self, text: str) -> None:
        pass


class _Uplink:
    delivered = 0


class _Spool:
    depth = 0
    dropped = 0

    def commit_overdue(self) -> float:
        return 0.0


def test_a_sleeping_session_is_alive_and_a_stuck_one_is_not(certs, broker, tmp_path, sessions):
    stuck, release = threading.Event(), threading.Event()

    def writable() -> None:
        if stuck.is_set():
            release.wait(30)  # a listener that hangs: the network thread is stuck in it

    session = _session(certs, broker, tmp_path, keepalive=60, writable=writable)
    _connected_and_settled(session, sessions)
    # Asleep in select() with a deadline ahead: alive now, though it has not woken for a while.
    assert time.monotonic() - session.last_alive < 0.1
    skew = [0.0]
    notifier = _Notifier()
    health = Health(session, _Spool(), _Uplink(), notifier,  # type: ignore[arg-type]
                    monotonic=lambda: time.monotonic() + skew[0])
    assert health.stalled() == []

    stuck.set()
    session.publish("edison/thunder10/test", b"x", qos=1)  # its PUBACK wakes the listener, which hangs
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() - session.last_alive < 0.5:
            assert time.monotonic() < deadline, "the hung thread still looks alive"
            time.sleep(0.05)
        frozen = session.last_alive
        skew[0] = STALL_AFTER  # as seen STALL_AFTER s later
        problems: List[Any] = health.stalled()
        assert len(problems) == 1 and "MQTT session thread has not come round" in problems[0]
        health.tick()
        assert notifier.pings == 0
        assert session.last_alive == frozen
    finally:
        stuck.clear()
        release.set()
    deadline = time.monotonic() + 10
    while time.monotonic() - session.last_alive > 0.1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    skew[0] = 0.0
    assert health.stalled() == []
