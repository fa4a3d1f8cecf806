"""Mutual TLS as the founding post sets it up: what connects, and what is refused in plain words."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from agent import cli
from agent.config import schema as config
from agent.mqtt import tls
from agent.mqtt.session import Session
from agent.tools.doctor import checkup as doctor
from conftest import PASSPHRASE, AgentProcess, Broker, Certs, agent_config


def test_encrypted_key_loads_with_its_passphrase_file(certs, broker, subscriber, run_agent, tmp_path):
    pass_file = tmp_path / "client.pass"
    pass_file.write_bytes(PASSPHRASE + b"\n")
    agent = run_agent(agent_config(certs, broker.port, tls={
        "cert_file": str(certs.encrypted_cert), "key_file": str(certs.encrypted_key),
        "key_password_file": str(pass_file)}))
    subscriber.online()
    assert agent.stop() == 0


def test_encrypted_key_loads_with_the_passphrase_from_the_environment(certs, broker, subscriber, run_agent):
    agent = run_agent(agent_config(certs, broker.port, tls={
        "cert_file": str(certs.encrypted_cert), "key_file": str(certs.encrypted_key)}),
        env={"EDISON_AGENT_KEY_PASSWORD": PASSPHRASE.decode()})
    subscriber.online()
    assert agent.stop() == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_keys_made_with_the_posts_openssl_commands_work(certs, broker, subscriber, run_agent, tmp_path):
    # As in the post: an RSA-2048 key encrypted with -des3, a CSR, and `openssl x509 -req`.
    key, csr, crt = tmp_path / "client.key", tmp_path / "client.csr", tmp_path / "client.crt"
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("genrsa", "-des3", "-passout", "pass:edison", "-out", str(key), "2048")
    run("req", "-new", "-key", str(key), "-passin", "pass:edison", "-subj", "/C=IT/O=LSaetta/CN=thunder10",
        "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(certs.ca), "-CAkey", str(certs.dir / "ca.key"),
        "-CAcreateserial", "-out", str(crt), "-days", "730")
    key.chmod(0o600)
    agent = run_agent(agent_config(certs, broker.port, tls={"cert_file": str(crt), "key_file": str(key)}),
                      env={"EDISON_AGENT_KEY_PASSWORD": "edison"})
    subscriber.online()
    assert agent.stop() == 0


def _exits_with_one_line(agent: AgentProcess, expected: str) -> str:
    assert agent.proc.wait(15) == 2
    lines = agent.output.splitlines()
    assert len(lines) == 1, agent.output
    assert expected in lines[0]
    return lines[0]


def test_wrong_passphrase_exits_2_with_one_line(certs, broker, run_agent, tmp_path):
    pass_file = tmp_path / "client.pass"
    pass_file.write_text("not the passphrase\n")
    agent = run_agent(agent_config(certs, broker.port, tls={
        "cert_file": str(certs.encrypted_cert), "key_file": str(certs.encrypted_key),
        "key_password_file": str(pass_file)}))
    line = _exits_with_one_line(agent, "mqtt.tls.key_password_file: wrong passphrase for")
    assert str(certs.encrypted_key) in line and str(pass_file) in line
    assert "not the passphrase" not in line


def test_encrypted_key_without_passphrase_exits_2_and_never_prompts(certs, broker, run_agent):
    agent = run_agent(agent_config(certs, broker.port, tls={
        "cert_file": str(certs.encrypted_cert), "key_file": str(certs.encrypted_key)}))
    line = _exits_with_one_line(agent, "mqtt.tls.key_file: ")
    assert "is encrypted but no passphrase is configured" in line
    assert "Enter PEM pass phrase" not in agent.output


def _refused(agent, expected: str) -> None:
    """The agent keeps retrying (the broker may be fixed) but says why, once, and stops cleanly."""
    agent.wait_for(expected, timeout=15)
    assert agent.stop() == 0
    assert agent.output.count(expected) == 1, agent.output
    assert "Traceback" not in agent.output


def test_no_client_certificate_is_refused_in_plain_words(certs, broker, run_agent):
    agent = run_agent(agent_config(certs, broker.port, tls={"cert_file": None, "key_file": None}))
    _refused(agent, "requires a client certificate and none was sent")


def test_client_certificate_from_another_ca_is_refused_in_plain_words(certs, broker, run_agent):
    agent = run_agent(agent_config(certs, broker.port, tls={
        "cert_file": str(certs.foreign_cert), "key_file": str(certs.foreign_key)}))
    _refused(agent, "the broker does not trust our client certificate")


def test_expired_client_certificate_is_named_at_start_and_refused(certs, broker, run_agent):
    agent = run_agent(agent_config(certs, broker.port, tls={
        "cert_file": str(certs.expired_cert), "key_file": str(certs.expired_key)}))
    agent.wait_for(r"client certificate .*thunder12.crt is expired on")
    _refused(agent, "the broker rejected our client certificate as expired")


def test_broker_hostname_mismatch_is_refused_in_plain_words(certs, run_agent, tmp_path: Path):
    impostor = Broker(tmp_path, certs, certs.wrong_host_cert, certs.wrong_host_key)
    impostor.start()
    try:
        agent = run_agent(agent_config(certs, impostor.port))
        _refused(agent, "the broker's certificate is not valid for '127.0.0.1'")
    finally:
        impostor.stop()


def test_a_broker_signed_by_another_ca_is_not_trusted(certs, broker, run_agent, tmp_path):
    agent = run_agent(agent_config(certs, broker.port, tls={"ca_file": str(certs.foreign_cert.parent / "ca.crt")}))
    _refused(agent, "was not signed by the CA in mqtt.tls.ca_file")


def test_the_session_negotiates_tls_1_2_or_newer_with_nagle_off(certs, broker, tmp_path):
    # In-process, to look at the live socket: Nagle with delayed ACKs stalls small MQTT packets ~40 ms.
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, broker.port)))
    cfg = config.load(path)
    assert cfg.mqtt.tls is not None
    session = Session(cfg.mqtt, tls.build_context(cfg.mqtt.tls))
    session.start()
    try:
        assert session.wait_connected(10)
        info = session.connection_info()
    finally:
        session.stop(5)
    assert info is not None
    assert info.tls_version in ("TLSv1.2", "TLSv1.3")
    assert info.nodelay
    assert session.connection_info() is None


def test_plain_mqtt_works_but_warns_at_every_start(certs, tmp_path, run_agent):
    plain = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key, tls=False)
    plain.start()
    try:
        cfg = agent_config(certs, plain.port)
        cfg["mqtt"]["tls"] = None
        agent = run_agent(cfg)
        agent.wait_for("mqtt.tls is not set: readings and the client's identity cross the network in clear text")
        agent.wait_for("connected to 127.0.0.1:%d, plain MQTT" % plain.port)
        assert agent.stop() == 0
    finally:
        plain.stop()



def test_a_refused_connection_gives_the_journal_the_raw_tls_error_beside_the_plain_words(
        certs, broker, tmp_path, caplog):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, broker.port, tls={
        "ca_file": str(certs.foreign_cert.parent / "ca.crt")})))
    cfg = config.load(path)
    assert cfg.mqtt.tls is not None
    session = Session(cfg.mqtt, tls.build_context(cfg.mqtt.tls))
    with caplog.at_level("ERROR", logger="agent.mqtt.session"):
        session.start()
        deadline = time.monotonic() + 10
        while not any(hasattr(r, "TLS_ERROR") for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
        session.stop(2)
    record = next(r for r in caplog.records if hasattr(r, "TLS_ERROR"))
    assert "CERTIFICATE_VERIFY_FAILED" in record.TLS_ERROR
    assert record.BROKER == "127.0.0.1:%d" % broker.port
    assert "was not signed by the CA in mqtt.tls.ca_file" in record.getMessage()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_posts_whole_openssl_setup_works_with_the_agent(certs, tmp_path, run_agent):
    """CA with -extensions v3_ca, RSA keys, `x509 -req` certificates without SANs (CN only), a
    -des3 client key: step by step as the founding post does it, then the agent connects."""
    d = tmp_path
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)  # noqa: E731
    subject = "/C=IT/ST=Italy/L=Rome/O=LSaetta/OU=IT/CN="
    run("req", "-new", "-x509", "-days", "730", "-extensions", "v3_ca", "-keyout", "ca.key", "-out", "ca.crt",
        "-passout", "pass:authority", "-subj", subject + "Our CA")
    # mosquitto cannot prompt for a passphrase: the broker's key is left unencrypted here.
    run("genrsa", "-out", "server.key", "2048")
    run("req", "-out", "server.csr", "-key", "server.key", "-new", "-subj", subject + "localhost")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-passin", "pass:authority",
        "-CAcreateserial", "-out", "server.crt", "-days", "730")
    run("genrsa", "-des3", "-passout", "pass:thunder", "-out", "client.key", "2048")
    run("req", "-out", "client.csr", "-key", "client.key", "-passin", "pass:thunder", "-new",
        "-subj", subject + "thunder10")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-passin", "pass:authority",
        "-CAcreateserial", "-out", "client.crt", "-days", "730")
    (d / "client.key").chmod(0o600)
    post = Certs(**dict(vars(certs), ca=d / "ca.crt"))
    broker = Broker(d, post, d / "server.crt", d / "server.key")
    broker.start()
    try:
        cfg = agent_config(post, broker.port, mqtt={"host": "localhost"}, tls={
            "ca_file": str(d / "ca.crt"), "cert_file": str(d / "client.crt"), "key_file": str(d / "client.key")})
        agent = run_agent(cfg, env={"EDISON_AGENT_KEY_PASSWORD": "thunder"})
        agent.wait_for("connected to localhost:%d" % broker.port)
        assert agent.stop() == 0
    finally:
        broker.stop()


# -- a damaged file is named as the file it is ----------------------------------------------


def _cut(source: Path, target: Path, how: str) -> Path:
    text = source.read_text()
    if how == "truncated":
        target.write_text(text[:len(text) // 2])
    else:
        # A line of base64 cut short: the BEGIN and END lines are still there.
        lines = text.splitlines()
        lines[2] = lines[2][:10]
        target.write_text("\n".join(lines) + "\n")
    target.chmod(0o600)
    return target


@pytest.mark.parametrize("how, says", [("truncated", "is truncated: its certificate has no '-----END CERTIFICATE"),
                                       ("damaged", "holds no usable certificate")])
def test_a_broken_certificate_is_reported_as_the_certificate_file(certs, tmp_path, capsys, how, says):
    cert = _cut(certs.device_cert, tmp_path / "client.crt", how)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, 8883, tls={"cert_file": str(cert)})))
    assert cli.main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()]
    assert "mqtt.tls.cert_file: %s %s" % (cert, says) in err
    assert "key" not in err.split(str(cert))[1]


@pytest.mark.parametrize("how, says", [("truncated", "is truncated: its key has no '-----END PRIVATE KEY-----'"),
                                       ("damaged", "holds no usable private key")])
def test_a_broken_key_is_reported_as_the_key_file(certs, tmp_path, capsys, how, says):
    key = _cut(certs.device_key, tmp_path / "client.key", how)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, 8883, tls={"key_file": str(key)})))
    assert cli.main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()]
    assert "mqtt.tls.key_file: %s %s" % (key, says) in err


def test_a_plain_mqtt_port_is_named_as_one_in_the_log_and_by_doctor(certs, tmp_path, run_agent):
    plain = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key, tls=False)
    plain.start()
    try:
        said = "answered but not with TLS: is it the plain MQTT port (1883)?"
        agent = run_agent(agent_config(certs, plain.port))
        agent.wait_for(said, timeout=15)
        assert agent.stop() == 0
        assert "Connection reset by peer" not in agent.output
        path = tmp_path / "doctor.yaml"
        path.write_text(yaml.safe_dump(agent_config(certs, plain.port)))
        checks = {c.check: c for c in doctor.run_checks(path)}
        assert said in checks["tls handshake"].detail
    finally:
        plain.stop()
