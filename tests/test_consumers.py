"""Loss a consumer can see: each run announces where its seq starts, and the Python consumer printed in
docs/consumers.md (run here as it is written there) tells a crash's seq jump from readings really lost."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

from agent.delivery.spool import clock_floor
from conftest import ROOT, Broker, Certs, Recorder, agent_config

DOC = ROOT / "docs" / "consumers.md"


def doc_block(language: str) -> str:
    blocks = re.findall(r"```%s\n(.*?)```" % language, DOC.read_text(), flags=re.DOTALL)
    assert blocks, "no %s block in %s" % (language, DOC)
    return str(blocks[0])


class Consumer:
    """consume.py from the docs, as a reader would run it: its own process, its printed lines collected."""

    def __init__(self, script: Path, broker: Broker, certs: Certs) -> None:
        env = dict(os.environ, MQTT_HOST="127.0.0.1", MQTT_PORT=str(broker.port), MQTT_CA=str(certs.ca),
                   MQTT_CERT=str(certs.monitor_cert), MQTT_KEY=str(certs.monitor_key),
                   MQTT_CLIENT_ID="consumer-test")
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen([sys.executable, "-u", str(script)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0, after: int = 0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[after:]:
                    found = regex.search(line)
                    if found:
                        return found
                remaining = deadline - time.monotonic()
                assert remaining > 0, "consume.py printed no line matching %r; it printed:\n%s" % (
                    pattern, "\n".join(self.lines[-40:]))
                self._cond.wait(min(remaining, 0.2))

    def count(self) -> int:
        with self._cond:
            return len(self.lines)

    def matching(self, pattern: str) -> List[re.Match[str]]:
        with self._cond:
            return [m for m in (re.search(pattern, line) for line in self.lines) if m]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


# Node-RED's function node, as far as this code uses it: `msg` in, `context.get/set`, the returned
# [output 1, output 2] arrays; the mqtt in node's "auto-detect" output (JSON parsed when it parses).
NODE_RED_HARNESS = r"""
const fs = require("fs");
const body = fs.readFileSync(process.argv[2], "utf8");
const store = {};
const context = {get: (k) => store[k], set: (k, v) => { store[k] = v; }};
const fn = new Function("msg", "context", "node", body);
const lines = fs.readFileSync(0, "utf8").split("\n").filter((l) => l);
for (const line of lines) {
    const m = JSON.parse(line);
    let payload = m.payload;
    try { payload = JSON.parse(m.payload); } catch (e) { /* a string, like "offline" */ }
    const result = fn({topic: m.topic, payload: payload}, context, {});
    console.log(JSON.stringify(result));
}
"""


def run_node_red_function(tmp_path: Path, messages: List[Tuple[str, bytes]]) -> List[Any]:
    function = tmp_path / "function.js"
    function.write_text(doc_block("javascript"))
    harness = tmp_path / "harness.js"
    harness.write_text(NODE_RED_HARNESS)
    feed = "".join(json.dumps({"topic": t, "payload": p.decode()}) + "\n" for t, p in messages)
    done = subprocess.run(["node", str(harness), str(function)], input=feed.encode(), capture_output=True,
                          timeout=60, check=True)
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


@pytest.fixture
def persistent_broker(tmp_path: Path, certs: Certs) -> Iterator[Broker]:
    # Persistence: the consumer's session (and what is queued for it) outlives a broker restart.
    b = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key, persistent=True)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def consumer(tmp_path: Path, persistent_broker: Broker, certs: Certs) -> Iterator[Consumer]:
    script = tmp_path / "consume.py"
    script.write_text(doc_block("python"))
    c = Consumer(script, persistent_broker, certs)
    yield c
    c.close()


def test_a_run_after_a_crash_announces_its_seq_start_in_the_status_and_the_health_document(
        certs, broker, subscriber, run_agent):
    cfg = agent_config(certs, broker.port)
    before = time.time()
    first = run_agent(cfg)
    # A new spool: the first run starts at the clock's floor (docs/delivery.md).
    assert subscriber.online()["seq_start"] >= clock_floor(before)
    last = max(subscriber.telemetry()["readings"][0]["seq"] for _ in range(5))
    first.stop(signal.SIGKILL)

    second = run_agent(cfg)
    start = subscriber.online()["seq_start"]
    # The reservation jump: the new run starts past everything the crashed one could have used.
    assert start > last + 1
    health = json.loads(subscriber.next("edison/thunder10/health"))
    assert health["readings"]["seq_start"] == start
    new = [r["seq"] for _ in range(5) for r in subscriber.telemetry()["readings"] if r["seq"] >= start]
    # The first reading this run takes has exactly the announced seq.
    assert min(new) == start
    assert second.stop() == 0


@pytest.fixture
def recorder(persistent_broker: Broker, certs: Certs) -> Iterator[Recorder]:
    r = Recorder(persistent_broker, certs, "consumers-recorder")
    yield r
    r.close()


def test_the_consumers_in_the_docs_report_the_loss_and_not_the_crash_jump(
        certs, persistent_broker, consumer, recorder, run_agent, tmp_path):
    broker = persistent_broker
    # Readings older than a second are dropped while the broker is away: a loss inside the run, on purpose.
    cfg = agent_config(certs, broker.port, spool={"max_age": 1}, health={"interval": 1})
    first = run_agent(cfg)
    # A new spool: the run starts at the clock's floor (docs/delivery.md), announced before any reading.
    begun = int(consumer.wait_for(r"^thunder10 online, this run's seqs start at (\d+)$").group(1))
    consumer.wait_for(r"^thunder10 temperature [\d.]+ degC seq %d$" % (begun + 9))
    first.stop(signal.SIGKILL)
    seen = consumer.count()

    second = run_agent(cfg)
    start = int(consumer.wait_for(r"^thunder10 online, this run's seqs start at (\d+)$", after=seen).group(1))
    assert start > begun + 10
    consumer.wait_for(r"^thunder10 temperature [\d.]+ degC seq %d$" % (start + 5))
    # The jump from the crashed run to this one is not loss.
    assert consumer.matching(r" lost ") == []

    broker.stop()
    time.sleep(4)
    broker.start()
    second.wait_for("connected to .* again")
    found = consumer.wait_for(r"^thunder10 lost (\d+) readings before seq (\d+)$")
    lost_before = int(found.group(2))
    consumer.wait_for(r"^thunder10 temperature [\d.]+ degC seq %d$" % (lost_before + 10))
    health = json.loads(Path(cfg["health"]["file"]).read_text())
    dropped = health["readings"]["dropped_age"]
    assert dropped > 0
    # Exactly what the agent dropped, and nothing else.
    assert sum(int(m.group(1)) for m in consumer.matching(r"^thunder10 lost (\d+) readings")) == dropped
    assert second.stop() == 0
    messages = [(m.topic, m.payload) for m in recorder.close()]

    # The Node-RED function, under node, on the same messages as they came from the broker.
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the Node-RED function was not run")
    results = [r for r in run_node_red_function(tmp_path, messages) if r]
    readings = [m for out, _ in results for m in out]
    alerts = [a["payload"] for _, out in results for a in out]
    distinct = {r["seq"] for t, p in messages if t.endswith("/telemetry") for r in json.loads(p)["readings"]}
    assert len(readings) == len(distinct)
    assert readings[0]["topic"] == "thunder10/temperature" and isinstance(readings[0]["payload"], (int, float))
    lost = [int(a.split()[1]) for a in alerts if a.startswith("lost ")]
    assert sum(lost) == dropped
    duplicates = [a for a in alerts if a.startswith("duplicate ")]
    assert len(duplicates) == sum(1 for t, p in messages if t.endswith("/telemetry")
                                  for r in json.loads(p)["readings"]) - len(distinct)
