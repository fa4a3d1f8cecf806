"""Delivery: batching, and nothing lost when the network silently stops carrying packets."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import List, Set

from conftest import Broker, Subscriber, agent_config


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
        counts: dict = {r["seq"]: 1 for r in first_readings}
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
        while time.monotonic() < deadline and (len(seqs) < count or max(seqs) < 10_000):
            seqs += [r["seq"] for r in watcher.telemetry()["readings"]]
        assert second_run.stop() == 0
    finally:
        watcher.close()
        broker.stop()
    old = [s for s in seqs if s <= count]
    new = [s for s in seqs if s > count]
    # What was committed before the kill comes first, in order, without a gap, from seq 1.
    assert count >= 40  # 3 s at 20/s, less at most one commit interval
    assert old == list(range(1, count + 1))
    # New readings continue above every seq the first run could have handed out.
    assert new and min(new) > count and new == sorted(new)
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
