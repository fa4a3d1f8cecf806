"""The fleet keys (protocol, expiry, user name, ALPN, SNI, target): their errors, their defaults, and the
warnings `check-config` prints for a cloud service's documented limits."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

import pytest

from agent import cli
from agent.config import schema as config
from agent.config import targets
from agent.mqtt.tls import build_context
from agent.tools.pki import authority as pki
from conftest import agent_config

BASE = """\
device: {id: thunder10}
state_dir: state
mqtt:
  host: iotgateway1
  port: 8883
  tls:
    ca_file: certs/ca.crt
    cert_file: certs/client.crt
    key_file: certs/client.key
board: simulated
sensors:
  - {name: temperature, type: analog, pin: 0, interval: 10, scale: 0.4883, offset: -50, unit: degC}
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    pki.init_ca(certs)
    issued = pki.issue_device(certs, "thunder10")
    issued.cert_file.rename(certs / "client.crt")
    issued.key_file.rename(certs / "client.key")
    return tmp_path


def mqtt_with(*lines: str) -> str:
    return BASE.replace("  port: 8883\n", "  port: 8883\n" + "".join("  %s\n" % line for line in lines))


def tls_with(*lines: str) -> str:
    return BASE.replace("    ca_file:", "".join("    %s\n" % line for line in lines) + "    ca_file:")


def check(config_dir: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = config_dir / "config.yaml"
    path.write_text(text)
    code = cli.main(["check-config", "-c", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def load(config_dir: Path, text: str) -> config.AgentConfig:
    path = config_dir / "config.yaml"
    path.write_text(text)
    return config.load(path)


BAD = {
    "unknown protocol": (mqtt_with("protocol: 3"),
                         "mqtt.protocol: 3 is not an MQTT version this agent speaks: use \"3.1.1\""),
    "protocol 5.0": (mqtt_with("protocol: 5.0"), "mqtt.protocol: 5.0 is not an MQTT version"),
    "clean_session with MQTT 5": (mqtt_with("protocol: 5", "clean_session: false"),
                                  "mqtt.clean_session: MQTT 5 has no clean_session: use mqtt.session_expiry"),
    "session_expiry with 3.1.1": (mqtt_with("session_expiry: 60"),
                                  "mqtt.session_expiry: needs mqtt.protocol: 5"),
    "message_expiry with 3.1.1": (mqtt_with("protocol: \"3.1.1\"", "message_expiry: 60"),
                                  "mqtt.message_expiry: needs mqtt.protocol: 5"),
    "negative session_expiry": (mqtt_with("protocol: 5", "session_expiry: -1"),
                                "mqtt.session_expiry: -1 is below the minimum 0"),
    "session_expiry too large": (mqtt_with("protocol: 5", "session_expiry: 4294967296"),
                                 "mqtt.session_expiry: 4294967296 is above the maximum 4294967295"),
    "zero message_expiry": (mqtt_with("protocol: 5", "message_expiry: 0"),
                            "mqtt.message_expiry: 0 is below the minimum 1"),
    "message_expiry as text": (mqtt_with("protocol: 5", "message_expiry: 1h"),
                               "mqtt.message_expiry: expected an integer, got a string '1h'"),
    "unknown username placeholder": (mqtt_with("username: '{device}'"),
                                     "mqtt.username: unknown placeholder {device} (known: {device_id}, {host})"),
    "empty username": (mqtt_with("username: ''"), "mqtt.username: is empty"),
    "unknown target": (mqtt_with("target: aws"), "mqtt.target: 'aws' is not one of: generic, aws-iot, "
                                                 "azure-iot-hub; did you mean 'aws-iot'?"),
    "alpn as a string": (tls_with("alpn: x-amzn-mqtt-ca"),
                         "mqtt.tls.alpn: expected a list of protocol names like [x-amzn-mqtt-ca], got a string"),
    "empty alpn list": (tls_with("alpn: []"), "mqtt.tls.alpn: expected a list of protocol names"),
    "alpn name too long": (tls_with("alpn: [%s]" % ("x" * 256)), "is longer than the 255 bytes ALPN allows"),
    "server_name with a space": (tls_with("server_name: 'iot gateway'"),
                                 "mqtt.tls.server_name: 'iot gateway' is not a host name"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_fleet_key_names_file_key_and_fix_and_exits_2(config_dir, capsys, name):
    text, expected = BAD[name]
    code, out, err = check(config_dir, text, capsys)
    assert code == 2
    assert out == ""
    assert expected in err, err
    for line in err.splitlines():
        assert line.startswith(str(config_dir / "config.yaml") + ":"), line


@pytest.mark.parametrize("raw", ["5", "'5'"])
def test_protocol_5_may_be_written_as_a_number_or_a_string(config_dir, raw):
    cfg = load(config_dir, mqtt_with("protocol: %s" % raw, "session_expiry: 300", "message_expiry: 60"))
    assert (cfg.mqtt.protocol, cfg.mqtt.session_expiry, cfg.mqtt.message_expiry) == ("5", 300, 60)


def test_the_defaults_stay_mqtt_3_1_1_with_no_user_name(config_dir):
    m = load(config_dir, BASE).mqtt
    assert (m.protocol, m.session_expiry, m.message_expiry, m.username, m.target) == ("3.1.1", 0, None, None,
                                                                                      "generic")
    assert m.tls is not None and (m.tls.alpn, m.tls.server_name) == ((), None)


def test_the_username_template_takes_the_device_id_and_the_host(config_dir):
    m = load(config_dir, mqtt_with("username: '{host}/{device_id}'")).mqtt
    assert m.username == "iotgateway1/thunder10"


def test_the_azure_target_sets_the_topic_and_username_the_hub_prescribes(config_dir):
    m = load(config_dir, BASE.replace("iotgateway1", "myhub.azure-devices.net")
             .replace("  port: 8883\n", "  port: 8883\n  target: azure-iot-hub\n")).mqtt
    assert m.topic == "devices/thunder10/messages/events/"
    assert m.username == "myhub.azure-devices.net/thunder10/?api-version=2021-04-12"
    assert m.client_id == "thunder10"
    # The hub takes only its events topic: status and health go there too, told apart by a property bag.
    assert m.status_topic == "devices/thunder10/messages/events/kind=status"
    assert m.health_topic == "devices/thunder10/messages/events/kind=health"


def test_alpn_and_server_name_reach_the_tls_context(config_dir):
    cfg = load(config_dir, tls_with("alpn: [x-amzn-mqtt-ca]", "server_name: broker.example"))
    assert cfg.mqtt.tls is not None
    ctx = build_context(cfg.mqtt.tls)
    assert ctx.server_name == "broker.example"  # type: ignore[attr-defined]
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


def test_check_config_shows_protocol_alpn_and_server_name(config_dir, capsys):
    text = tls_with("alpn: [x-amzn-mqtt-ca]", "server_name: broker.example").replace(
        "  port: 8883\n", "  port: 8883\n  protocol: 5\n  session_expiry: 300\n  message_expiry: 600\n")
    code, out, err = check(config_dir, text, capsys)
    assert code == 0, err
    assert "hostname verified as 'broker.example', ALPN x-amzn-mqtt-ca" in out
    assert "protocol   MQTT 5, session kept 300 s after a disconnect, telemetry expires after 600 s" in out
    assert "warning:" not in out


# --- the targets' documented limits ----------------------------------------------------------


def test_a_generic_target_never_warns(config_dir, capsys):
    code, out, _ = check(config_dir, mqtt_with("port: 443", "keepalive: 5").replace("  port: 8883\n", ""), capsys)
    assert code == 0
    assert "warning:" not in out


def test_a_clean_aws_config_has_no_warnings(config_dir, capsys):
    text = mqtt_with("target: aws-iot", "protocol: 5")
    code, out, err = check(config_dir, text, capsys)
    assert code == 0, err
    assert "warning:" not in out


def test_aws_warnings_name_the_key_and_the_fix(config_dir, capsys):
    text = mqtt_with("target: aws-iot", "client_id: gateway-7", "keepalive: 10",
                     "topic: 'a/b/c/d/e/f/g/h/{device_id}'").replace("port: 8883", "port: 443")
    code, out, _ = check(config_dir, text, capsys)
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert any("mqtt.client_id 'gateway-7' is not device.id 'thunder10': AWS IoT Core policies expect the "
               "client id to be the thing name" in w for w in warnings), warnings
    assert any("mqtt.topic 'a/b/c/d/e/f/g/h/thunder10' has 8 '/': AWS IoT Core allows at most 7" in w
               for w in warnings)
    assert any("mqtt.keepalive 10 is outside AWS IoT Core's 30-1200 s" in w for w in warnings)
    assert any("mqtt.port 443 needs mqtt.tls.alpn: [x-amzn-mqtt-ca]" in w for w in warnings)
    assert len(warnings) == 4


def test_port_443_with_the_alpn_name_is_fine_for_aws(config_dir, capsys):
    text = tls_with("alpn: [x-amzn-mqtt-ca]").replace("port: 8883", "port: 443").replace(
        "  host: iotgateway1\n", "  host: iotgateway1\n  target: aws-iot\n")
    code, out, _ = check(config_dir, text, capsys)
    assert code == 0
    assert "warning:" not in out


def test_a_batch_over_the_payload_limit_is_a_warning_with_the_batch_size_that_fits(config_dir):
    long_name = "soil_temperature_north_east_greenhouse_bed_4"
    cfg = load(config_dir, mqtt_with("target: aws-iot").replace("name: temperature", "name: " + long_name)
               + "batch: {max_readings: 1000}\n")
    per_reading = targets.estimated_payload(dataclasses.replace(
        cfg, batch=config.BatchConfig(max_readings=1))) - len('{"device":"thunder10","readings":[]}')
    assert 1000 * per_reading > 128 * 1024  # the premise: a full batch of 1000 cannot fit
    warnings = targets.aws_iot(cfg)
    assert len(warnings) == 1
    assert "AWS IoT Core refuses messages over 128 KiB: set batch.max_readings to" in warnings[0]
    fitting = int(warnings[0].rsplit(" to ", 1)[1].split()[0])
    small = dataclasses.replace(cfg, batch=config.BatchConfig(max_readings=fitting))
    assert targets.estimated_payload(small) <= 128 * 1024
    assert targets.estimated_payload(cfg, fitting + 1) > 128 * 1024  # and no more than that fits
    # Half of it fits IoT Hub's 256 KiB.
    assert targets.azure_iot_hub(cfg) == targets.azure_iot_hub(small)


def test_azure_defaults_leave_only_the_warnings_the_agent_cannot_fix_itself(config_dir, capsys):
    text = BASE.replace("iotgateway1", "myhub.azure-devices.net").replace(
        "  port: 8883\n", "  port: 8883\n  target: azure-iot-hub\n")
    code, out, err = check(config_dir, text, capsys)
    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1, warnings
    assert "IoT Hub does not support retained messages" in warnings[0]


def test_azure_warns_about_a_status_topic_kept_from_a_mosquitto_config(config_dir, capsys):
    text = mqtt_with("target: azure-iot-hub", "status_topic: 'edison/{device_id}/status'")
    code, out, _ = check(config_dir, text, capsys)
    assert code == 0
    assert ("warning: mqtt.status_topic 'edison/thunder10/status': IoT Hub refuses it" in out
            and "set mqtt.status_topic: 'devices/{device_id}/messages/events/kind=status'" in out)


def test_azure_warnings_for_a_config_made_for_mosquitto(config_dir, capsys):
    text = mqtt_with("target: azure-iot-hub", "protocol: 5", "topic: 'edison/{device_id}/telemetry'",
                     "username: thunder10").replace("port: 8883", "port: 443")
    code, out, _ = check(config_dir, text, capsys)
    assert code == 0
    assert "warning: mqtt.topic 'edison/thunder10/telemetry': IoT Hub takes device-to-cloud messages only on " \
           "'devices/thunder10/messages/events/'" in out
    assert "warning: mqtt.username 'thunder10': IoT Hub expects '{host}/{device_id}/?api-version=2021-04-12'" in out
    assert "warning: mqtt.protocol 5: IoT Hub speaks MQTT 3.1.1" in out
    assert "warning: mqtt.port 443: IoT Hub serves MQTT on 443 only over WebSockets" in out


def test_the_running_agent_logs_the_targets_warnings_at_start(certs, broker, run_agent):
    cfg = agent_config(certs, broker.port, mqtt={"target": "aws-iot", "client_id": "not-the-thing-name"})
    agent = run_agent(cfg)
    agent.wait_for(r"WARNING.*mqtt\.client_id 'not-the-thing-name' is not device\.id 'thunder10'")
    # A warning, not a refusal: the agent goes on to connect.
    agent.wait_for("connected to 127.0.0.1")
