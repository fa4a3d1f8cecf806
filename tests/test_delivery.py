"""Delivery: batching, and nothing lost when the network silently stops carrying packets."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest
import yaml

from agent.config import schema as config
from agent.delivery.spool import Spool
from agent.delivery.uplink import Uplink
from agent.mqtt import tls
from agent.mqtt.session import Session
from agent.sampling.reading import Sample
from agent.tools.pki import authority as pki
from conftest import Broker, Certs, Subscriber, agent_config


def seqs_until(watcher: Subscriber, wanted: Set[int], timeout: float) -> Set[int]:
    seen: Set[int] = set()
    deadline = time.monotonic() + timeout
    while not wanted <= seen and time.monotonic() < deadline:
        try:
            message = watcher.telemetry(timeout=1)
        except AssertionError:
            continue
        seen.update(r["seq"] for r in message["readings"])
    return seen


def test_readings_are_batched_up_to_max_readings(certs, broker, subscriber, run_agent):
    agent = run_agent(agent_config(certs, broker.port, batch={"max_readings": 5, "max_delay": 5}))
    sizes = [len(subscriber.telemetry()["readings"]) for _ in range(3)]
    assert sizes == [5, 5, 5]
    assert agent.stop() == 0


def test_a_partial_batch_leaves_after_max_delay(certs, broker, subscriber, run_agent):
    cfg = agent_config(certs, broker.port, batch={"max_readings": 100, "max_delay": 1.0})
    cfg["sensors"][0]["interval"] = 0.3
    agent = run_agent(cfg)
    started = time.monotonic()
    first = subscriber.telemetry()
    waited = time.monotonic() - started
    assert 2 <= len(first["readings"]) <= 5
    assert waited < 4
    seqs = [r["seq"] for r in first["readings"]]
    assert seqs == sorted(seqs)
    assert agent.stop() == 0


class BlackHoleProxy:
    """A TCP relay that can stop carrying bytes without closing anything: a cable pulled
    somewhere between the board and the broker, which no socket error reports."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.target_port = target_port
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.sockets: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            # While the hole is open, bytes vanish: neither side hears anything.
            if self.flowing.is_set():
                try:
                    sink.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for s in self.sockets:
            s.close()


def test_keepalive_detects_a_black_hole_and_nothing_is_lost(certs, tmp_path, run_agent):
    broker = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key, persistent=True)
    broker.start()
    proxy = BlackHoleProxy(broker.port)
    watcher = Subscriber(broker, certs, session="monitor-blackhole")
    try:
        time.sleep(0.3)
        cfg = agent_config(certs, proxy.port, mqtt={"keepalive": 5})
        agent = run_agent(cfg)
        # The first message may carry several readings (those taken before the connection).
        seen_first = {r["seq"] for r in watcher.telemetry()["readings"]}
        first = min(seen_first)
        mark = len(agent.lines)
        proxy.flowing.clear()
        # No error reaches either socket: only the missing PINGRESP tells (within ~2 keepalives).
        agent.wait_for("connection lost", after=mark, timeout=20)
        proxy.flowing.set()
        agent.wait_for("connected to 127.0.0.1:%d again" % proxy.port, after=mark, timeout=20)
        time.sleep(1.0)
        assert agent.stop() == 0
        last = int(agent.wait_for(r"stopped: \d+ readings delivered").split("stopped: ")[1].split()[0])
        seen = seqs_until(watcher, set(range(first, last + 1)) - seen_first, timeout=15) | seen_first
        assert set(range(first, last + 1)) - seen == set()
    finally:
        watcher.close()
        proxy.close()
        broker.stop()


def test_broker_killed_for_30_s_at_20_readings_per_s_loses_nothing(certs, tmp_path, run_agent):
    broker = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key, persistent=True)
    broker.start()
    watcher = Subscriber(broker, certs, session="monitor-kill")
    try:
        time.sleep(1.5)  # the broker's autosave has the subscriber's session before the kill
        cfg = agent_config(certs, broker.port)
        cfg["sensors"][0]["interval"] = 0.05
        agent = run_agent(cfg)
        # The first message may carry several readings (those taken before the connection).
        first_readings = watcher.telemetry()["readings"]
        first = first_readings[0]["seq"]
        time.sleep(2)
        assert broker.proc is not None
        broker.proc.kill()  # SIGKILL: no clean shutdown, no will to deliver
        broker.proc.wait()
        time.sleep(30)
        counts: Dict[int, int] = {r["seq"]: 1 for r in first_readings}
        # mosquitto_sub exits when its broker dies; what it saw before stays counted.
        watcher.close()
        for topic, payload in list(watcher.messages.queue):
            for reading in json.loads(payload)["readings"] if topic.endswith("/telemetry") else []:
                counts[reading["seq"]] = counts.get(reading["seq"], 0) + 1
        mark = len(agent.lines)
        broker.start()
        # The same persistent session, restored from the broker's autosave: it was queued for.
        watcher = Subscriber(broker, certs, session="monitor-kill")
        agent.wait_for("connected to 127.0.0.1:%d again" % broker.port, after=mark, timeout=20)
        time.sleep(3)
        assert agent.stop() == 0
        last = int(agent.wait_for(r"stopped: \d+ readings delivered").split("stopped: ")[1].split()[0])
        deadline = time.monotonic() + 30
        while not set(range(first, last + 1)) <= set(counts) and time.monotonic() < deadline:
            try:
                message = watcher.telemetry(timeout=1)
            except AssertionError:
                continue
            for reading in message["readings"]:
                counts[reading["seq"]] = counts.get(reading["seq"], 0) + 1
        assert last > 600  # 20/s for over 30 s
        assert set(range(first, last + 1)) - set(counts) == set()
        # Duplicates only for what was in flight when the broker died: at most the window.
        duplicates = sum(c - 1 for c in counts.values())
        print("broker kill: %d readings, %d duplicates" % (last - first + 1, duplicates))
        assert duplicates <= 20, duplicates
    finally:
        watcher.close()
        broker.stop()


def test_agent_killed_mid_stream_resumes_from_its_spool_and_seq_keeps_growing(certs, tmp_path, run_agent):
    broker = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key, persistent=True)
    cfg = agent_config(certs, broker.port)
    cfg["sensors"][0]["interval"] = 0.05
    # The broker is away: readings pile up in the spool, as on a board whose gateway is down.
    first_run = run_agent(cfg)
    time.sleep(3)
    first_run.proc.kill()
    first_run.proc.wait()
    broker.start()
    watcher = Subscriber(broker, certs)
    try:
        time.sleep(0.3)
        second_run = run_agent(cfg)
        replayed = second_run.wait_for(r"readings not yet acknowledged are sent again first")
        count = int(replayed.split("spool ")[1].split(": ")[1].split()[0])
        seqs: List[int] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(seqs) <= count + 5:
            seqs += [r["seq"] for r in watcher.telemetry()["readings"]]
        assert second_run.stop() == 0
    finally:
        watcher.close()
        broker.stop()
    old, new = seqs[:count], seqs[count:]
    # What was committed before the kill comes first, in order, without a gap.
    assert count >= 40  # 3 s at 20/s, less at most one commit interval
    assert old == list(range(old[0], old[0] + count))
    # New readings continue above every seq the first run could have handed out (its reservation).
    assert new and min(new) >= old[0] + 10_000 and new == sorted(new)
    assert "Traceback" not in second_run.output


def test_a_corrupt_spool_is_moved_aside_and_the_agent_runs(certs, broker, subscriber, run_agent):
    cfg = agent_config(certs, broker.port)
    state = Path(cfg["state_dir"])
    state.mkdir(parents=True)
    (state / "spool.db").write_bytes(b"this is not a database" * 1000)
    agent = run_agent(cfg)
    agent.wait_for(r"spool file .*spool.db is corrupt .*: moved aside to spool.db.corrupt-")
    assert subscriber.telemetry()["readings"]
    assert agent.stop() == 0
    assert any(p.name.startswith("spool.db.corrupt-") for p in state.iterdir())


def test_a_reconnect_resumes_the_tls_session(certs, broker, run_agent):
    proxy = BlackHoleProxy(broker.port)
    try:
        agent = run_agent(agent_config(certs, proxy.port))
        first = agent.wait_for("connected to 127.0.0.1:%d" % proxy.port)
        assert "resumed" not in first
        mark = len(agent.lines)
        for s in proxy.sockets:  # the connection drops; the broker keeps its ticket keys
            s.shutdown(socket.SHUT_RDWR)
        again = agent.wait_for("connected to 127.0.0.1:%d again" % proxy.port, after=mark)
        assert "resumed TLS session" in again
        assert agent.stop() == 0
    finally:
        proxy.close()


def test_session_resumption_can_be_turned_off(certs, broker, run_agent):
    proxy = BlackHoleProxy(broker.port)
    try:
        agent = run_agent(agent_config(certs, proxy.port, tls={"session_resumption": False}))
        agent.wait_for("connected to 127.0.0.1:%d" % proxy.port)
        mark = len(agent.lines)
        for s in proxy.sockets:
            s.shutdown(socket.SHUT_RDWR)
        again = agent.wait_for("connected to 127.0.0.1:%d again" % proxy.port, after=mark)
        assert "resumed" not in again
        assert agent.stop() == 0
    finally:
        proxy.close()


def test_a_stop_sends_a_partial_batch_at_once_rather_than_leaving_it(certs, broker, subscriber, run_agent):
    agent = run_agent(agent_config(certs, broker.port, batch={"max_readings": 1000, "max_delay": 600}))
    time.sleep(1.0)  # a few readings, far from a full batch and its deadline
    assert agent.stop() == 0
    readings = subscriber.telemetry(timeout=5)["readings"]
    assert len(readings) >= 3
    assert "not yet acknowledged" not in agent.output


# -- a message the broker refuses ------------------------------------------------------------------

class _Highest(random.Random):
    """The backoff's jitter always at its cap, so the log shows the cap itself."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Pump:
    """The session's listener, as the daemon's reporter: the uplink may take more after every event."""

    def __init__(self, uplink: Uplink) -> None:
        self._uplink = uplink

    def connected(self, info: object) -> None:
        pass

    def writable(self) -> None:
        self._uplink.pump()


def _pipeline(certs: Certs, broker: Broker, tmp_path: Path, *, protocol: str = "3.1.1",
              topic: Optional[str] = None) -> Tuple[Session, Spool, Uplink]:
    """A session, an in-memory spool and an uplink, wired as the daemon wires them."""
    path = tmp_path / "refusal.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, broker.port, mqtt={"protocol": protocol})))
    cfg = config.load(path)
    assert cfg.mqtt.tls is not None
    spool = Spool()
    session = Session(cfg.mqtt, tls.build_context(cfg.mqtt.tls), rng=_Highest())
    uplink = Uplink(spool, session, "thunder10", topic or cfg.mqtt.topic, 1, window=cfg.mqtt.inflight,
                    batch=cfg.batch)
    session.listen(Pump(uplink))
    return session, spool, uplink


def _send(spool: Spool, uplink: Uplink, value: int) -> int:
    seq = spool.append(Sample("t", value, "C", time.time())).seq
    uplink.pump()
    return seq


def test_a_message_the_broker_closes_the_connection_on_is_dropped_and_telemetry_goes_on(
        certs, broker, subscriber, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    session, spool, uplink = _pipeline(certs, broker, tmp_path)
    session.start()
    try:
        assert session.wait_connected(15)
        before = _send(spool, uplink, 1)
        assert before in seqs_until(subscriber, {before}, 15)
        # mosquitto closes the connection on a topic with U+0000 (MQTT 3.1.1 gives it no other way to say no).
        refused, acked = threading.Event(), threading.Event()
        assert session.publish("edison/thunder10/a\0b", b"poison", 1, on_ack=acked.set, on_refused=refused.set)
        assert refused.wait(30), "the poisoned message was never given up"
        assert not acked.is_set()
        # Telemetry flows again: readings sampled after the poison reach an independent subscriber.
        after = {_send(spool, uplink, 2), _send(spool, uplink, 3)}
        assert after <= seqs_until(subscriber, after, 30)
        assert session.wait_connected(15) and spool.wait_empty(15)
    finally:
        session.stop(5)
    said = [r.getMessage() for r in caplog.records if "probably refuses" in r.getMessage()]
    assert len(said) == 1 and "'edison/thunder10/a\\x00b'" in said[0]
    # Two closes in a row, and the backoff grew between them instead of starting over at each CONNACK.
    delays = [float(r.getMessage().split()[-2]) for r in caplog.records
              if r.getMessage().startswith("next connection attempt in")]
    assert len(delays) == 2 and delays[0] < delays[1]


@pytest.fixture
def acl_broker(tmp_path: Path, certs: Certs) -> Iterator[Broker]:
    acl = tmp_path / "acl"
    acl.write_text(pki.mosquitto_acl(["monitor"]))
    b = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key, acl_file=acl)
    b.start()
    yield b
    b.stop()


def test_mqtt5_a_refused_puback_drops_that_message_with_one_line_and_counts_its_readings(
        certs, acl_broker, tmp_path, caplog):
    # The ACL lets a device publish only under edison/<its id>/ (telemetry, status, health, reply/#).
    session, spool, uplink = _pipeline(certs, acl_broker, tmp_path, protocol="5",
                                       topic="edison/thunder10/not-granted")
    session.start()
    try:
        assert session.wait_connected(15)
        for value in range(5):
            _send(spool, uplink, value)
        assert spool.wait_empty(15)
        assert spool.stats().dropped_refused == 5 and spool.dropped == 5
        assert uplink.delivered == 0
        # The session is not hurt: a message to a granted topic is acknowledged.
        acked = threading.Event()
        assert session.publish("edison/thunder10/health", b"{}", 1, on_ack=acked.set)
        assert acked.wait(15) and session.connected and session.reconnects == 0
    finally:
        session.stop(5)
    said = [r.getMessage() for r in caplog.records if "refused a message to" in r.getMessage()]
    assert len(said) == 1 and "'edison/thunder10/not-granted'" in said[0] and "Not authorized" in said[0]
