"""Delivery: batching, and nothing lost when the network silently stops carrying packets."""

from __future__ import annotations

import socket
import threading
import time
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
        first = watcher.telemetry()["readings"][0]["seq"]
        mark = len(agent.lines)
        proxy.flowing.clear()
        # No error reaches either socket: only the missing PINGRESP tells (within ~2 keepalives).
        agent.wait_for("connection lost", after=mark, timeout=20)
        proxy.flowing.set()
        agent.wait_for("connected to 127.0.0.1:%d again" % proxy.port, after=mark, timeout=20)
        time.sleep(1.0)
        assert agent.stop() == 0
        last = int(agent.wait_for(r"stopped: \d+ readings delivered").split("stopped: ")[1].split()[0])
        seen = seqs_until(watcher, set(range(first, last + 1)), timeout=15) | {first}
        assert set(range(first, last + 1)) - seen == set()
    finally:
        watcher.close()
        proxy.close()
        broker.stop()
