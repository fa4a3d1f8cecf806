"""Health you can see: the retained health document, its file on the board, and `edison-agent status`."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import signal
import socket
import stat
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml
from test_delivery import BlackHoleProxy

from agent import cli
from agent.config import schema as config
from agent.config.fields import keys_of
from agent.delivery.spool import Spool, clock_floor
from agent.mqtt import tls
from agent.mqtt.session import Session
from agent.service import health_report
from agent.service.health_report import (
    Board,
    Certificate,
    Connection,
    HealthReport,
    LastError,
    Readings,
    SpoolState,
)
from conftest import ROOT, Subscriber, agent_config, free_port

HEALTH = "edison/thunder10/health"


def _days_left(cert: Path, at: float) -> int:
    dates = tls.certificate_dates(str(cert))
    assert dates is not None
    return (dates[1] - datetime.datetime.fromtimestamp(at, datetime.timezone.utc)).days


def _config_file(agent: Any) -> Path:
    return Path(agent.proc.args[-1])


def _file_document(path: Path, payloads: List[str], subscriber: Subscriber, timeout: float = 15.0) -> str:
    """The file's document, once it is one of the documents published (a tick may publish after the connect)."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text().strip() if path.exists() else ""
        if text in payloads:
            return text
        assert time.monotonic() < deadline, "the file never held a published document: %r" % text
        try:
            payloads.append(subscriber.next(HEALTH, timeout=0.5))
        except AssertionError:
            pass


# -- over a real broker -----------------------------------------------------------------------


def test_the_retained_health_document_arrives_at_connect_with_the_agents_facts(certs, broker, subscriber,
                                                                                run_agent):
    cfg = agent_config(certs, broker.port)
    agent = run_agent(cfg)
    doc = json.loads(subscriber.next(HEALTH))

    assert doc["schema"] == 1 and doc["device"] == "thunder10" and doc["version"] == "0.1.0"
    assert doc["interval"] == 60.0
    assert doc["config_hash"] == hashlib.sha256(_config_file(agent).read_bytes()).hexdigest()[:12]
    assert abs(doc["time"] - time.time()) < 30 and 0 < doc["uptime"] < 30
    c = doc["connection"]
    assert c["state"] == "connected" and c["problem"] is None and c["reconnects"] == 0
    assert c["tls_version"] == "TLSv1.3" and c["cipher"].startswith("TLS_") and c["resumed"] is False
    assert abs(c["since"] - doc["time"]) < 30
    # The fixture's device certificate: `pki issue-device` default of 730 days, issued this session.
    assert doc["certificate"]["days_left"] == _days_left(certs.device_cert, doc["time"])
    assert doc["certificate"]["days_left"] in (729, 730)
    assert doc["spool"]["durable"] is True and doc["spool"]["depth"] >= doc["spool"]["in_flight"] >= 0
    assert set(doc["readings"]) == {"sampled", "delivered", "dropped_full", "dropped_age", "dropped_corrupt",
                                    "seq_start"}
    # A new spool: this run's seqs start at the clock's floor (docs/delivery.md), not before this test began.
    assert clock_floor(doc["time"] - 600) <= doc["readings"]["seq_start"] <= clock_floor(doc["time"])
    assert doc["readings"]["sampled"] >= doc["readings"]["delivered"] >= 0
    assert doc["readings"]["dropped_full"] == doc["readings"]["dropped_age"] == 0
    assert doc["board"]["mem_available_mib"] > 0 and doc["board"]["load1"] is not None
    assert doc["last_error"] is None

    # Retained: a client that subscribes later gets it at once.
    late = Subscriber(broker, certs)
    try:
        assert json.loads(late.next(HEALTH, timeout=10))["config_hash"] == doc["config_hash"]
    finally:
        late.close()
    # The status topic keeps its contract beside it.
    assert agent.stop() == 0
    assert subscriber.next("edison/thunder10/status", payload="offline")


def test_the_health_file_holds_the_published_document_and_says_stopped_after_a_stop(certs, broker, subscriber,
                                                                                     run_agent):
    cfg = agent_config(certs, broker.port)
    path = Path(cfg["health"]["file"])
    agent = run_agent(cfg)
    payloads = [subscriber.next(HEALTH)]
    text = _file_document(path, payloads, subscriber)
    assert HealthReport.from_json(text).connection.state == "connected"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    assert agent.stop() == 0
    stopped = health_report.read(path)
    assert stopped.connection.state == "stopped"
    # Every reading taken was delivered before the stop.
    assert stopped.readings.delivered == stopped.readings.sampled > 0
    assert stopped.spool.depth == 0
    assert cli.main(["status", "--file", str(path)]) == 1


def test_with_a_one_second_interval_a_document_follows_every_second_and_the_counts_grow(certs, broker,
                                                                                         subscriber, run_agent):
    agent = run_agent(agent_config(certs, broker.port, health={"interval": 1}))
    docs = [json.loads(subscriber.next(HEALTH)) for _ in range(4)]
    assert all(d["interval"] == 1.0 for d in docs)
    times = [d["time"] for d in docs]
    uptimes = [d["uptime"] for d in docs]
    assert times == sorted(times) and uptimes == sorted(uptimes) and len(set(times)) == 4
    # About one a second: the tick may come half a tick early, never a full interval late, plus load.
    gaps = [b - a for a, b in zip(times[1:], times[2:])]
    assert all(0.4 <= gap <= 4.0 for gap in gaps), gaps
    assert docs[-1]["readings"]["delivered"] > docs[1]["readings"]["delivered"]
    assert docs[-1]["readings"]["sampled"] > docs[1]["readings"]["sampled"]
    assert agent.stop() == 0


def test_without_a_broker_the_file_shows_disconnected_with_the_last_error_and_its_time(certs, run_agent, tmp_path):
    cfg = agent_config(certs, free_port(), health={"interval": 1})
    path = Path(cfg["health"]["file"])
    agent = run_agent(cfg)
    agent.wait_for("connection refused|Connection refused")
    deadline = time.monotonic() + 20
    while True:
        report = health_report.read(path) if path.exists() else None
        if report is not None and report.last_error is not None:
            break
        assert time.monotonic() < deadline, "no last error in the health file"
        time.sleep(0.2)
    assert report.connection.state == "disconnected"
    assert report.connection.tls_version is None and report.connection.resumed is None
    assert "refused" in (report.connection.problem or "")
    assert "refused" in report.last_error.message
    assert abs(report.last_error.time - time.time()) < 30
    # Readings are sampled and kept: nothing delivered, the backlog grows in the spool.
    assert report.readings.delivered == 0 and report.spool.depth == report.readings.sampled
    assert agent.stop() == 0


def test_after_a_dropped_connection_the_document_counts_the_reconnect_and_the_resumed_session(certs, broker,
                                                                                              subscriber, run_agent):
    proxy = BlackHoleProxy(broker.port)
    try:
        agent = run_agent(agent_config(certs, proxy.port))
        assert json.loads(subscriber.next(HEALTH))["connection"]["resumed"] is False
        for s in proxy.sockets:  # the connection drops; the broker keeps its ticket keys
            s.shutdown(socket.SHUT_RDWR)
        # A tick may have published one more before the drop: the reconnect's is the first with reconnects 1.
        deadline = time.monotonic() + 30
        while True:
            doc = json.loads(subscriber.next(HEALTH, timeout=30))
            if doc["connection"]["reconnects"] or time.monotonic() > deadline:
                break
        c = doc["connection"]
        assert c["state"] == "connected" and c["reconnects"] == 1 and c["resumed"] is True
        # The last error is the drop itself, or, when a telemetry message was in flight at the drop, the
        # note that follows it at the reconnect (that message stays unacknowledged across the drop).
        message = doc["last_error"]["message"] if doc["last_error"] else ""
        assert "connection lost" in message or "closed the connection while a message" in message
        assert agent.stop() == 0
    finally:
        proxy.close()


def test_a_reload_publishes_a_document_with_the_new_config_hash_at_once(certs, broker, subscriber, run_agent):
    cfg = agent_config(certs, broker.port)
    agent = run_agent(cfg)
    first = json.loads(subscriber.next(HEALTH))
    path = _config_file(agent)
    path.write_text(yaml.safe_dump(dict(cfg, log_level="debug")))
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for("reloaded .*: log level")
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert expected != first["config_hash"]
    # Not a minute later at the next interval: the reload publishes one itself.
    deadline = time.monotonic() + 10
    while json.loads(subscriber.next(HEALTH, timeout=10))["config_hash"] != expected:
        assert time.monotonic() < deadline
    assert agent.stop() == 0


# -- the document without a broker --------------------------------------------------------------


def _config(tmp_path: Path, certs: Any, **health: Any) -> config.AgentConfig:
    cfg = agent_config(certs, 8883, health=health)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return config.load(path)


def test_a_document_gathered_before_any_connect_says_disconnected_and_round_trips(certs, tmp_path):
    cfg = _config(tmp_path, certs)
    session, spool = Session(cfg.mqtt, None), Spool()
    now = time.time()
    facts = health_report.Facts(cfg, started=time.monotonic() - 5, config_digest="abc",
                                cert_not_after=health_report.certificate_expiry(cfg))
    progress = health_report.Progress(sampled=7, delivered=3, resumed=None, last_error=None)
    report = health_report.gather(facts, session, spool, progress, now=now)
    assert report.connection.state == "disconnected" and report.connection.tls_version is None
    assert report.readings.sampled == 7 and report.readings.delivered == 3 and report.readings.dropped == 0
    assert report.spool == SpoolState(depth=0, in_flight=0, bytes=0, file_bytes=0, durable=False)
    assert report.certificate is not None and report.certificate.days_left == _days_left(certs.device_cert, now)
    assert 5 <= report.uptime < 60
    assert HealthReport.from_json(report.to_json()) == report


def test_the_config_hash_names_the_file_contents(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"mqtt: {host: a}\n")
    first = health_report.config_hash(path)
    assert re.fullmatch(r"[0-9a-f]{12}", first)
    path.write_bytes(b"mqtt: {host: b}\n")
    assert health_report.config_hash(path) != first


def test_the_file_is_world_readable_in_a_directory_others_can_enter_whatever_the_umask(tmp_path):
    target = tmp_path / "run" / "edison-agent" / "health.json"
    old = os.umask(0o077)
    try:
        health_report.write_atomically(target, "{}\n")
        health_report.write_atomically(target, "{\"second\": 1}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o755
    assert json.loads(target.read_text()) == {"second": 1}
    # No temporary file left beside it.
    assert sorted(p.name for p in target.parent.iterdir()) == ["health.json"]


def test_an_unwritable_health_file_is_one_warning_not_a_failure(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    writer = health_report.HealthFile(blocker / "health.json")
    report = _report(time.time())
    assert writer.write(report) is False
    assert writer.write(report) is False
    warnings = [r for r in caplog.records if "cannot write the health file" in r.getMessage()]
    assert len(warnings) == 1


def test_the_last_error_handler_keeps_the_latest_warning_with_its_time():
    handler = health_report.LastErrorHandler()
    logger = health_report.log.getChild("test")
    logger.addHandler(handler)
    try:
        logger.info("fine")
        assert handler.last is None
        logger.warning("sensor %s: read timed out", "door")
        logger.error("broker refused the connection")
    finally:
        logger.removeHandler(handler)
    last = _latest(handler)
    assert last is not None and last.message == "broker refused the connection"
    assert abs(last.time - time.time()) < 5


def _latest(handler: health_report.LastErrorHandler) -> Optional[LastError]:
    # handler.last read afresh: after `handler.last is None` mypy would hold it None past the logging calls.
    return handler.last


# -- config -----------------------------------------------------------------------------------


def test_health_keys_default_and_validate(certs, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/edison-agent-x")
    cfg = agent_config(certs, 8883)
    del cfg["health"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = config.load(path)
    assert loaded.health == config.HealthConfig(interval=60.0, file=Path("/run/edison-agent-x/health.json"))
    assert loaded.mqtt.health_topic == "edison/thunder10/health"
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    assert config.load(path).health.file == Path("/run/edison-agent/health.json")

    cfg["health"] = {"interval": 0, "file": "here.json", "every": 5}
    cfg["mqtt"]["health_topic"] = "fleet/{device_id}/#"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    problems = "\n".join(err.value.problems)
    assert "health.interval: 0.0: must be at least 1" in problems
    assert "health.every: unknown key (known keys: interval, file)" in problems
    assert "mqtt.health_topic: 'fleet/thunder10/#' is not a valid topic" in problems

    cfg["health"] = {}
    cfg["mqtt"]["health_topic"] = "edison/{device_id}/status"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert err.value.problems == ["%s: mqtt.health_topic: 'edison/thunder10/status' is also the status topic: "
                                  "give the health document a topic of its own" % path]

    cfg["health"] = {"interval": 5, "file": "here.json"}
    cfg["mqtt"]["health_topic"] = "fleet/{device_id}/vitals"
    path.write_text(yaml.safe_dump(cfg))
    loaded = config.load(path)
    assert loaded.health == config.HealthConfig(interval=5.0, file=tmp_path / "here.json")
    assert loaded.mqtt.health_topic == "fleet/thunder10/vitals"


def test_every_health_key_has_a_row_in_the_reference():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for key in ["health.%s" % k for k in keys_of(config.HealthConfig)] + ["mqtt.health_topic"]:
        assert "| `%s` |" % key in doc, key


# -- edison-agent status ----------------------------------------------------------------------


def _report(now: float, **changes: Any) -> HealthReport:
    base: Dict[str, Any] = dict(
        device="thunder10", version="0.1.0", time=now - 5, uptime=3725.0, interval=60.0, config_hash="3f2a9c1b0d4e",
        connection=Connection(state="connected", since=now - 600, problem=None, reconnects=2,
                              tls_version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", resumed=True),
        readings=Readings(sampled=1200, delivered=1198, dropped_full=0, dropped_age=0, dropped_corrupt=0),
        spool=SpoolState(depth=2, in_flight=2, bytes=240, file_bytes=32768, durable=True),
        certificate=Certificate(not_after="2028-11-26T03:00:00Z", days_left=729),
        last_error=LastError(time=now - 700, message="127.0.0.1:8883: connection lost"),
        board=Board(cpu_temperature=None, mem_available_mib=712.4, load1=0.12))
    base.update(changes)
    return HealthReport(**base)


def _status(tmp_path: Path, capsys: Any, report: HealthReport, *args: str) -> Tuple[int, str, str]:
    path = tmp_path / "health.json"
    health_report.write_atomically(path, report.to_json())
    code = cli.main(["status", "--file", str(path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_prints_a_short_table_without_colours_when_not_on_a_terminal(tmp_path, capsys):
    code, out, err = _status(tmp_path, capsys, _report(time.time()))
    assert code == 0 and err == ""
    assert "\033[" not in out
    lines = out.splitlines()
    assert lines[0] == "edison-agent 0.1.0 on thunder10, config 3f2a9c1b0d4e"
    table = dict(re.match(r"  (\S+(?: \S+)?)\s{2,}(.*)", line).groups() for line in lines[1:])  # type: ignore
    assert re.fullmatch(r"connected since \d\d:\d\d:\d\d \(10 min\)", table["state"])
    assert table["updated"] == "5 s ago (every 1 min), up 1 h 2 min"
    assert table["readings"] == "1200 sampled, 1198 delivered"
    assert table["backlog"] == "2 in the spool (2 in flight), 240 bytes"
    assert table["dropped"] == "0" and table["reconnects"] == "2"
    assert table["TLS"] == "TLSv1.3 TLS_AES_256_GCM_SHA384, resumed session"
    assert table["certificate"] == "729 days left (until 2028-11-26 03:00 UTC)"
    assert table["last error"].endswith("(11 min ago) 127.0.0.1:8883: connection lost")
    # No thermal zone on this report: the fact is left out, not shown as zero.
    assert table["board"] == "712 MiB free, load 0.12"
    # Aligned: every value starts in the same column.
    assert len({line.index(value) for line, value in zip(lines[1:], table.values())}) == 1


def test_status_json_prints_the_document(tmp_path, capsys):
    report = _report(time.time())
    code, out, err = _status(tmp_path, capsys, report, "--json")
    assert code == 0 and err == ""
    assert HealthReport.from_json(out) == report


def test_status_of_a_stale_document_says_so_and_exits_1(tmp_path, capsys):
    report = _report(time.time(), time=time.time() - 4 * 60)
    code, out, _ = _status(tmp_path, capsys, report)
    assert code == 1
    assert "STALE: last written 4 min ago, expected every 1 min" in out
    code, out, err = _status(tmp_path, capsys, report, "--json")
    assert code == 1 and json.loads(out)["time"] == report.time and "is stale: last written 4 min ago" in err
    # Three intervals are allowed.
    code, _, _ = _status(tmp_path, capsys, _report(time.time(), time=time.time() - 2.5 * 60))
    assert code == 0


def test_status_without_a_health_file_is_one_line_and_exit_1(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "health.json"
    assert cli.main(["status", "--file", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("edison-agent status: no health file at %s: is the agent running? "
                   "(systemctl status edison-agent)\n" % missing)


def test_status_of_a_file_that_is_not_a_health_document_is_one_line_and_exit_1(tmp_path, capsys):
    path = tmp_path / "health.json"
    path.write_text("{\"schema\": 1, \"device\": \"x\"}")
    assert cli.main(["status", "--file", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "is not a health document the agent wrote" in err


def test_status_reads_the_file_named_by_the_config_and_reports_a_bad_config_with_exit_2(certs, tmp_path, capsys):
    cfg = agent_config(certs, 8883, health={"file": str(tmp_path / "elsewhere.json")})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    health_report.write_atomically(tmp_path / "elsewhere.json", _report(time.time()).to_json())
    assert cli.main(["status", "-c", str(path)]) == 0
    assert "1200 sampled" in capsys.readouterr().out

    path.write_text(yaml.safe_dump(dict(cfg, health={"interval": "often"})))
    assert cli.main(["status", "-c", str(path)]) == 2
    assert "health.interval: expected a number, got a string 'often'" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_colours_only_on_a_terminal_and_never_with_NO_COLOR(tmp_path, monkeypatch):
    from agent.tools import status

    path = tmp_path / "health.json"
    now = time.time()
    health_report.write_atomically(path, _report(now, connection=Connection(
        state="disconnected", since=now - 30, problem="connection refused", reconnects=0, tls_version=None,
        cipher=None, resumed=None), certificate=Certificate(not_after="2026-12-01T00:00:00Z", days_left=3)).to_json())
    args = cli.parser(["status"]).parse_args(["status", "--file", str(path)])
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = _Terminal()
    assert status.run_status(args, out=out) == 0
    assert status.RED + "disconnected" + status.RESET in out.getvalue()
    assert status.RED + "3 days left" + status.RESET in out.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    out = _Terminal()
    status.run_status(args, out=out)
    assert "\033[" not in out.getvalue() and "disconnected since" in out.getvalue()


def test_status_reads_a_file_the_running_agent_wrote(certs, broker, subscriber, run_agent, capsys):
    cfg = agent_config(certs, broker.port)
    agent = run_agent(cfg)
    subscriber.next(HEALTH)
    path = Path(cfg["health"]["file"])
    assert cli.main(["status", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "connected since" in out and "TLSv1.3" in out and "full handshake" in out
    assert agent.stop(signal.SIGTERM) == 0
