"""`edison-agent doctor` against a real mosquitto: each broken setup is built for real and named."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
import yaml
from mqtt311_broker import MQTT311Broker
from tls12_only import doctor_without_tls13

from agent.tools.doctor import checkup as doctor
from agent.tools.pki import authority as pki
from conftest import ROOT, Broker, Certs, agent_config, free_port

UTC = datetime.timezone.utc


@pytest.fixture(autouse=True)
def _no_passphrase_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDISON_AGENT_KEY_PASSWORD", raising=False)


@pytest.fixture(scope="module")
def bad(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, pki.Issued]:
    """Broken device certificates from the same CA as the broker's, made with explicit dates."""
    d = tmp_path_factory.mktemp("bad")
    (d / "ca.crt").write_bytes(certs.ca.read_bytes())
    (d / "ca.key").write_bytes((certs.dir / "ca.key").read_bytes())
    (d / "ca.key").chmod(0o600)
    d.chmod(0o700)
    now = datetime.datetime.now(UTC)
    return {
        "expired": pki.issue_device(d, "old", not_before=now - datetime.timedelta(days=40), days=30),
        "future": pki.issue_device(d, "young", not_before=now + datetime.timedelta(days=2), days=30),
        # A broker's certificate is serverAuth only: what a device must not present as its own.
        "server_only": pki.issue_broker(d, "serverish"),
        "encrypted": pki.issue_device(d, "locked", passphrase=b"secret passphrase"),
    }


def _run(tmp_path: Path, cfg: Dict[str, Any]) -> List[doctor.Check]:
    return doctor.run_checks(_write(tmp_path, cfg))


def _write(tmp_path: Path, cfg: Dict[str, Any]) -> Path:
    path = tmp_path / "doctor.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _tls(**files: Any) -> Dict[str, Any]:
    return {k: str(v) for k, v in files.items()}


# Each case: how to break the setup, then (check name, words its PROBLEM line must hold).
Case = Callable[[Certs, Dict[str, pki.Issued], Path], Dict[str, Any]]

CASES: Dict[str, Any] = {
    "broker signed by another CA than our ca_file": (
        lambda c, b, t: _tls(ca_file=c.foreign_cert.parent / "ca.crt"),
        "tls handshake", ["was not signed by the CA in mqtt.tls.ca_file"]),
    "client certificate from another CA": (
        lambda c, b, t: _tls(cert_file=c.foreign_cert, key_file=c.foreign_key),
        # The alert or, when the close wins the race (TLS 1.3), the bare close: both name the cause.
        "mqtt connect", [("does not trust our client certificate", "probably rejected the client certificate")]),
    "expired client certificate": (
        lambda c, b, t: _tls(cert_file=b["expired"].cert_file, key_file=b["expired"].key_file),
        "client certificate dates", ["is expired: valid", "this board's clock reads"]),
    "client certificate not yet valid": (
        lambda c, b, t: _tls(cert_file=b["future"].cert_file, key_file=b["future"].key_file),
        "client certificate dates", ["is not yet valid: valid", "this board's clock reads"]),
    "key of another certificate": (
        lambda c, b, t: _tls(cert_file=c.device_cert, key_file=c.monitor_key),
        "key matches certificate", ["monitor.key is not the private key of", "thunder10.crt"]),
    "client certificate without clientAuth": (
        lambda c, b, t: _tls(cert_file=b["server_only"].cert_file, key_file=b["server_only"].key_file),
        "client certificate usage", ["lacks extendedKeyUsage clientAuth", "serverAuth"]),
    "encrypted key without passphrase": (
        lambda c, b, t: _tls(cert_file=b["encrypted"].cert_file, key_file=b["encrypted"].key_file),
        "key passphrase", ["locked.key is encrypted but no passphrase is configured"]),
    "missing key file": (
        lambda c, b, t: _tls(key_file=t / "nowhere.key"),
        "key_file", ["mqtt.tls.key_file: file not found", "nowhere.key"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_broken_setup_is_named(case: str, certs: Certs, bad: Dict[str, pki.Issued], broker: Broker,
                                    tmp_path: Path) -> None:
    make, check, words = CASES[case]
    checks = _run(tmp_path, agent_config(certs, broker.port, tls=make(certs, bad, tmp_path)))
    problems = [c for c in checks if c.status == doctor.PROBLEM]
    assert problems, "\n".join(c.line() for c in checks)
    named = [c for c in problems if c.check == check]
    assert named, "no problem in %r:\n%s" % (check, "\n".join(c.line() for c in checks))
    line = named[0].line()
    for w in words:
        assert any(alternative in line for alternative in (w if isinstance(w, tuple) else (w,))), line
    assert named[0].fix


def test_san_mismatch_shows_the_sans_the_broker_has(certs: Certs, tmp_path: Path) -> None:
    impostor = Broker(tmp_path, certs, certs.wrong_host_cert, certs.wrong_host_key)
    impostor.start()
    try:
        checks = _run(tmp_path, agent_config(certs, impostor.port))
    finally:
        impostor.stop()
    line = next(c for c in checks if c.check == "tls handshake").line()
    assert "not valid for '127.0.0.1'" in line and "SANs DNS:iotgateway1" in line, line
    assert "fix: set mqtt.host to a name in the certificate's SANs" in line


def test_broker_requiring_tls_1_3_vs_a_client_capped_at_1_2(certs: Certs, tmp_path: Path) -> None:
    # The doctor runs where OpenSSL has no TLS 1.3, as on the Edison's stock image (1.0.2).
    strict = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key)
    strict.conf.write_text(strict.conf.read_text().replace("tls_version tlsv1.2", "tls_version tlsv1.3"))
    strict.start()
    try:
        checks = doctor_without_tls13(_write(tmp_path, agent_config(certs, strict.port)), tmp_path)
    finally:
        strict.stop()
    line = next(c for c in checks if c.check == "tls handshake").line()
    assert line.startswith("PROBLEM") and "share no TLS version" in line, line


def test_a_tls_section_without_a_ca_file_is_named_and_nothing_goes_out_in_clear(certs: Certs, tmp_path: Path) -> None:
    cfg = agent_config(certs, free_port())
    del cfg["mqtt"]["tls"]["ca_file"]
    checks = _run(tmp_path, cfg)
    by_name = {c.check: c for c in checks}
    assert by_name["ca_file"].status == doctor.PROBLEM and "mqtt.tls.ca_file is not set" in by_name["ca_file"].detail
    assert by_name["broker"].status == doctor.SKIPPED, _lines(checks)
    assert "tls" not in by_name and "tcp" not in by_name, _lines(checks)


def test_port_closed_names_the_address_tried(certs: Certs, tmp_path: Path) -> None:
    port = free_port()
    checks = _run(tmp_path, agent_config(certs, port))
    line = next(c for c in checks if c.check == "tcp").line()
    assert "connection refused by 127.0.0.1:%d" % port in line and "address tried: 127.0.0.1" in line, line
    assert not any(c.check == "tls handshake" for c in checks)


def test_dns_failure_names_the_host(certs: Certs, tmp_path: Path) -> None:
    checks = _run(tmp_path, agent_config(certs, 8883, mqtt={"host": "no-such-host.invalid"}))
    line = next(c for c in checks if c.check == "dns").line()
    assert "DNS failure: cannot resolve 'no-such-host.invalid'" in line, line


def test_world_readable_key_is_a_problem(certs: Certs, broker: Broker, tmp_path: Path) -> None:
    key = tmp_path / "open.key"
    shutil.copy(certs.device_key, key)
    key.chmod(0o644)
    checks = _run(tmp_path, agent_config(certs, broker.port, tls=_tls(key_file=key)))
    line = next(c for c in checks if c.check == "key permissions").line()
    assert "readable by every user (mode 0644)" in line and "chmod 600" in line, line


def test_a_sound_setup_passes_every_check_and_exits_0_with_json(certs: Certs, broker: Broker,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, broker.port)))
    done = subprocess.run([sys.executable, "-m", "agent", "doctor", "-c", str(path), "--json"], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    checks = json.loads(done.stdout)
    assert {c["status"] for c in checks} <= {"ok"}, done.stdout
    assert {"tcp", "tls handshake", "mqtt connect", "key matches certificate"} <= {c["check"] for c in checks}
    assert all(set(c) == {"check", "status", "detail", "fix"} for c in checks)


def test_a_problem_exits_1_with_one_line_per_check_and_no_traceback(certs: Certs, tmp_path: Path) -> None:
    path = tmp_path / "closed.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, free_port())))
    done = subprocess.run([sys.executable, "-m", "agent", "doctor", "-c", str(path)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert any(line.startswith("PROBLEM  tcp: connection refused") for line in done.stdout.splitlines()), done.stdout


def test_the_daemon_logs_days_left_at_start_and_warns_under_30(certs: Certs, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from agent.service import daemon

    d = tmp_path / "soon"
    d.mkdir(mode=0o700)
    for name in ("ca.crt", "ca.key"):
        shutil.copy(certs.dir / name, d / name)
    soon = pki.issue_device(d, "soon", days=10)
    with caplog.at_level("INFO", logger="agent.service.daemon"):
        daemon.warn_about_dates(certs.device_cert)
        daemon.warn_about_dates(soon.cert_file)
    info, warning = caplog.records[-2:]
    assert info.levelname == "INFO" and "expires in 729 days" in info.getMessage()
    assert warning.levelname == "WARNING" and "soon.crt expires in 9 days" in warning.getMessage()


# -- issue 19: diagnoses that are not Mosquitto's ------------------------------------------------


@pytest.fixture
def mqtt311(certs: Certs) -> Iterator[Callable[..., MQTT311Broker]]:
    started: List[MQTT311Broker] = []

    def start(**options: Any) -> MQTT311Broker:
        b = MQTT311Broker(certs.ca, certs.broker_cert, certs.broker_key, **options)
        started.append(b)
        return b

    yield start
    for b in started:
        b.close()


def _lines(checks: List[doctor.Check]) -> str:
    return "\n".join(c.line() for c in checks)


def test_an_mqtt5_connect_closed_by_a_3_1_1_only_broker_is_named_not_blamed_on_the_certificate(
        certs: Certs, mqtt311: Callable[..., MQTT311Broker], tmp_path: Path) -> None:
    b = mqtt311()
    checks = _run(tmp_path, agent_config(certs, b.port, mqtt={"protocol": 5}))
    connect = next(c for c in checks if c.check == "mqtt connect")
    assert connect.status == doctor.PROBLEM, _lines(checks)
    assert "this broker speaks MQTT 3.1.1 only: set mqtt.protocol: 4" in connect.detail, _lines(checks)
    assert "certificate" not in connect.detail and "mqtt.protocol: 4" in connect.fix
    # It was asked in both versions: 5 first, then 3.1.1.
    assert b.connect_levels[:2] == [5, 4]
    # And the advice works: with protocol 4 every check passes, the publish checks included.
    checks = _run(tmp_path, agent_config(certs, b.port, mqtt={"protocol": 4}))
    assert {c.status for c in checks} == {doctor.OK}, _lines(checks)


def test_the_agent_logs_the_same_diagnosis(certs: Certs, mqtt311: Callable[..., MQTT311Broker],
                                           run_agent: Callable[..., Any]) -> None:
    b = mqtt311()
    agent = run_agent(agent_config(certs, b.port, mqtt={"protocol": 5}))
    line = agent.wait_for("speaks MQTT 3.1.1")
    assert "this broker speaks MQTT 3.1.1 only: set mqtt.protocol: 4" in line and "certificate" not in line, line
    # One probe, not one per retry: after several more MQTT 5 attempts, still a single 3.1.1 CONNECT.
    deadline = time.monotonic() + 30
    while b.connect_levels.count(5) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b.connect_levels.count(5) >= 4, agent.output
    assert b.connect_levels.count(4) == 1, b.connect_levels


def test_each_topic_the_agent_publishes_to_is_checked_and_a_refusing_close_names_the_topic(
        certs: Certs, mqtt311: Callable[..., MQTT311Broker], tmp_path: Path) -> None:
    # RabbitMQ's way: CONNECT accepted, the connection closed at a publish its topic permissions refuse.
    b = mqtt311(refused_topics={"edison/thunder10/status"})
    checks = _run(tmp_path, agent_config(certs, b.port))
    by_name = {c.check: c for c in checks}
    assert by_name["mqtt connect"].status == doctor.OK, _lines(checks)
    status = by_name["publish status"]
    assert status.status == doctor.PROBLEM, _lines(checks)
    assert ("closed the connection right after our QoS 1 publish to edison/thunder10/status: it probably "
            "refused the topic (ACL, topic permission)") in status.detail
    assert "RabbitMQ topic permissions" in status.fix and "AWS IoT policy" in status.fix
    # The other topics are still tried, on a new connection, and pass.
    assert by_name["publish telemetry"].status == doctor.OK and by_name["publish health"].status == doctor.OK
    # The probes are never retained (a device's retained status stays as it was) and say what they are.
    assert {topic for topic, _, _ in b.published} == {"edison/thunder10/telemetry", "edison/thunder10/health"}
    for _, payload, retained in b.published:
        assert not retained and json.loads(payload) == {"device": "thunder10", "probe": True, "readings": []}


def test_a_publish_refused_by_a_mosquitto_acl_shows_in_the_mqtt5_puback(certs: Certs, tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("pattern write edison/%u/telemetry\npattern write edison/%u/health\n")
    b = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key, acl_file=acl)
    b.start()
    try:
        checks = _run(tmp_path, agent_config(certs, b.port, mqtt={"protocol": 5}))
    finally:
        b.stop()
    by_name = {c.check: c for c in checks}
    assert by_name["publish status"].status == doctor.PROBLEM, _lines(checks)
    assert "refused our publish to edison/thunder10/status (MQTT 5 PUBACK reason code 135" in \
        by_name["publish status"].detail
    assert by_name["publish telemetry"].status == doctor.OK, _lines(checks)


@pytest.mark.parametrize("code, words", [
    (4, ["bad user name or password", "use_identity_as_username", "ssl_cert_login", "peer_cert_as_username",
         "AWS IoT"]),
    (5, ["not authorized", "acl_file", "rabbitmqctl set_permissions", "EMQX", "iot:Connect"]),
])
def test_connack_4_and_5_say_what_to_check_on_each_broker(code: int, words: List[str], certs: Certs,
                                                          mqtt311: Callable[..., MQTT311Broker],
                                                          tmp_path: Path) -> None:
    b = mqtt311(connack=code)
    checks = _run(tmp_path, agent_config(certs, b.port))
    connect = next(c for c in checks if c.check == "mqtt connect")
    for w in words:
        assert w in connect.detail, connect.line()
    if code == 4:
        assert connect.fix.startswith("the user name is 'thunder10' (the certificate's CN): create that user")
    else:
        assert "allow 'thunder10' (the certificate's CN) and client id 'thunder10'" in connect.fix
