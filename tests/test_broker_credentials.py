"""Issue 19 item 3: mqtt.password_file (or EDISON_AGENT_MQTT_PASSWORD) beside mqtt.username, for
brokers that want a password as well as the client certificate; never in a log line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import yaml

from agent.config import schema as config
from conftest import ROOT, Broker, Certs, agent_config

PASSWORD = "s3cret-Sauce-77"


@pytest.fixture
def password_broker(tmp_path: Path, certs: Certs) -> Any:
    """Mosquitto wanting user 'gateway-user' with PASSWORD, besides the client certificate."""
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "gateway-user", PASSWORD], check=True,
                   capture_output=True)
    passwords.chmod(0o644)  # read by mosquitto running as us
    b = Broker(tmp_path, certs, certs.broker_cert, certs.broker_key)
    b.conf.write_text(b.conf.read_text().replace(
        "use_identity_as_username true",
        "use_identity_as_username false\nallow_anonymous false\npassword_file %s" % passwords))
    b.start()
    yield b
    b.stop()


def _password_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text(text)
    path.chmod(mode)
    return path


def _load(tmp_path: Path, cfg: Dict[str, Any]) -> config.AgentConfig:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return config.load(path)


def test_the_agent_connects_with_user_and_password_and_never_logs_the_password(
        certs: Certs, password_broker: Broker, tmp_path: Path, run_agent: Callable[..., Any]) -> None:
    cfg = agent_config(certs, password_broker.port, log_level="debug", mqtt={
        "username": "gateway-user", "password_file": str(_password_file(tmp_path, PASSWORD + "\n"))})
    agent = run_agent(cfg)
    agent.wait_for("connected to 127.0.0.1")
    # The broker checked the pair: it logs the user it let in.
    _wait_for_broker_line(password_broker, "as thunder10 (", "u'gateway-user'")
    assert agent.stop() == 0
    assert PASSWORD not in agent.output and PASSWORD not in password_broker.log.read_text()


def test_a_wrong_password_is_refused_and_the_message_names_user_not_password(
        certs: Certs, password_broker: Broker, tmp_path: Path, run_agent: Callable[..., Any]) -> None:
    agent = run_agent(agent_config(certs, password_broker.port, log_level="debug",
                                   mqtt={"username": "gateway-user"}),
                      env={"EDISON_AGENT_MQTT_PASSWORD": "not-" + PASSWORD})
    line = agent.wait_for("refused the connection")
    assert "bad user name or password" in line or "not authorized" in line.lower(), line
    assert PASSWORD not in agent.output


def test_the_environment_variable_is_the_password_when_no_file_is_set(
        certs: Certs, password_broker: Broker, run_agent: Callable[..., Any]) -> None:
    agent = run_agent(agent_config(certs, password_broker.port, mqtt={"username": "gateway-user"}),
                      env={"EDISON_AGENT_MQTT_PASSWORD": PASSWORD})
    agent.wait_for("connected to 127.0.0.1")
    _wait_for_broker_line(password_broker, "as thunder10 (", "u'gateway-user'")
    assert PASSWORD not in agent.output


def _wait_for_broker_line(broker: Broker, *words: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if any(all(w in line for w in words) for line in broker.log.read_text().splitlines()):
            return
        time.sleep(0.1)
    raise AssertionError("no broker log line with %r:\n%s" % (words, broker.log.read_text()[-3000:]))


@pytest.mark.parametrize("mode, text, words", [
    (0o644, PASSWORD, "is readable by every user (mode 0644): run 'chmod 600"),
    (0o600, "\n", "is empty: put the password on its first line"),
])
def test_check_config_validates_the_password_file(certs: Certs, tmp_path: Path, mode: int, text: str,
                                                  words: str) -> None:
    path = tmp_path / "c.yaml"
    cfg = agent_config(certs, 8883, mqtt={"username": "u", "password_file": str(_password_file(tmp_path, text, mode))})
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "agent", "check-config", "-c", str(path)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("%s: mqtt.password_file: " % path) and words in done.stderr, done.stderr
    assert PASSWORD not in done.stdout + done.stderr


def test_a_password_file_without_a_user_name_is_refused(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as err:
        _load(tmp_path, agent_config(certs, 8883, mqtt={"password_file": str(_password_file(tmp_path, PASSWORD))}))
    assert any("mqtt.password_file: a password needs mqtt.username" in p for p in err.value.problems)


def test_check_config_says_where_the_password_comes_from_but_not_what_it_is(certs: Certs, tmp_path: Path) -> None:
    secret = _password_file(tmp_path, PASSWORD)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(agent_config(certs, 8883, mqtt={"username": "u", "password_file": str(secret)})))
    done = subprocess.run([sys.executable, "-m", "agent", "check-config", "-c", str(path)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "user name 'u', password from file %s" % secret in done.stdout
    assert PASSWORD not in done.stdout and PASSWORD not in repr(_load(tmp_path, yaml.safe_load(path.read_text())))
