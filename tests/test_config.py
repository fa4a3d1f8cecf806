"""Bad config: every problem at once, one line each naming the file and key, exit 2, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent import cli
from agent.config import schema as config
from agent.tools.pki import authority as pki
from conftest import ROOT


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A directory laid out like /etc/edison-agent: config.yaml next to certs/."""
    certs = tmp_path / "certs"
    pki.init_ca(certs)
    issued = pki.issue_device(certs, "thunder10")
    issued.cert_file.rename(certs / "client.crt")
    issued.key_file.rename(certs / "client.key")
    return tmp_path


GOOD = """\
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
  - {name: door, type: digital, pin: 4, interval: 1}
  - {name: cpu_temp, type: system, metric: cpu_temperature, interval: 30}
"""


def check(config_dir: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    path = config_dir / "config.yaml"
    path.write_text(text)
    code = cli.main(["check-config", "-c", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_good_config_is_summarised_on_one_screen(config_dir, capsys):
    code, out, err = check(config_dir, GOOD, capsys)
    assert code == 0, err
    assert err == ""
    assert "config.yaml: valid" in out
    assert "iotgateway1:8883 as 'thunder10'" in out
    assert "TLS 1.2+" in out and "hostname verified" in out
    assert "edison/thunder10/telemetry (QoS 1)" in out
    assert "cpu_temp (degC)" in out  # the system driver's default unit
    assert len(out.splitlines()) < 25


def test_the_shipped_config_is_valid_once_its_certificates_exist(config_dir, capsys):
    # Its state_dir is the board's /var/lib/edison-agent; a developer's test runs as themselves.
    shipped = (ROOT / "config" / "config.yaml").read_text() + "state_dir: state\n"
    code, out, err = check(config_dir, shipped, capsys)
    assert code == 0, err
    assert "thunder10" in out and "iotgateway1:8883" in out


BAD = {
    "bad YAML": ("mqtt: {host: [unclosed\n", r"config.yaml: line 2, column 1: invalid YAML"),
    "not a mapping": ("- just\n- a list\n", "expected a YAML mapping at the top level"),
    "unknown top-level key": (GOOD + "sensor: []\n", "config.yaml: sensor: unknown key"),
    "unknown nested key": (GOOD.replace("  port: 8883", "  port: 8883\n  hots: x"), "mqtt.hots: unknown key"),
    "duplicate key": (GOOD.replace("  port: 8883", "  port: 8883\n  port: 1883"), "duplicate key 'port'"),
    "port of wrong type": (GOOD.replace("port: 8883", "port: eighty"), "mqtt.port: expected an integer"),
    "port out of range": (GOOD.replace("port: 8883", "port: 70000"), "mqtt.port: 70000 is above the maximum"),
    "boolean as port": (GOOD.replace("port: 8883", "port: yes"), "mqtt.port: expected an integer"),
    "missing host": (GOOD.replace("  host: iotgateway1\n", ""), "mqtt.host: required str is missing"),
    "missing mqtt": ("device: {id: thunder10}\n", "mqtt: required section is missing"),
    "missing ca file": (GOOD.replace("certs/ca.crt", "certs/nope.crt"),
                        "mqtt.tls.ca_file: file not found: "),
    "old TLS version": (GOOD.replace("    ca_file:", "    min_version: \"1.0\"\n    ca_file:"),
                        "mqtt.tls.min_version: '1.0' is refused"),
    "unknown sensor type": (GOOD.replace("type: digital", "type: digitl"),
                            "did you mean 'digital'?"),
    "duplicate sensor name": (GOOD.replace("name: door", "name: temperature"),
                              "sensors[1](temperature).name: duplicate sensor name 'temperature'"),
    "negative interval": (GOOD.replace("interval: 1}", "interval: -1}"),
                          "sensors[1](door).interval: -1 is below the minimum"),
    "unknown sensor key": (GOOD.replace("pin: 4,", "pin: 4, pullup: true,"), "sensors[1](door).pullup: unknown key"),
    "missing pin": (GOOD.replace("pin: 4, ", ""), "sensors[1](door).pin: required int is missing"),
    "bad ADC resolution": (GOOD.replace("pin: 0,", "pin: 0, bits: 11,"),
                           "sensors[0](temperature).bits: 11 is not supported"),
    "unknown system metric": (GOOD.replace("cpu_temperature", "cpu_temp"),
                              "sensors[2](cpu_temp).metric: 'cpu_temp' is not one of"),
    "sensors not a list": (GOOD.split("sensors:")[0] + "sensors: {name: x}\n", "sensors: expected a list"),
    "unknown topic placeholder": (GOOD.replace("  port: 8883", "  port: 8883\n  topic: 'a/{device}'"),
                                  "mqtt.topic: unknown placeholder {device}"),
    "wildcard in topic": (GOOD.replace("  port: 8883", "  port: 8883\n  topic: 'a/#'"),
                          "mqtt.topic: 'a/#' is not a valid topic to publish to"),
    "reconnect bounds reversed": (GOOD.replace("  port: 8883", "  port: 8883\n  reconnect: {min_delay: 10, "
                                                                "max_delay: 2}"),
                                  "mqtt.reconnect.max_delay: 2.0 is below min_delay 10.0"),
    "qos 2": (GOOD.replace("  port: 8883", "  port: 8883\n  qos: 2"), "mqtt.qos: 2 is not one of: 0, 1"),
    "bad board": (GOOD.replace("board: simulated", "board: raspberry"), "board: 'raspberry' is not one of"),
    "two filters": (GOOD.replace("interval: 1}", "interval: 1, filter: {median: 3, mean: 3}}"),
                    "sensors[1](door).filter: give one of median: N or mean: N"),
    "scale and polynomial": (GOOD.replace("interval: 1}", "interval: 1, calibration: {scale: 2, polynomial: [1]}}"),
                             "sensors[1](door).calibration: give either scale/offset or polynomial"),
    "range reversed": (GOOD.replace("interval: 1}", "interval: 1, range: [10, 0]}"),
                       "sensors[1](door).range: [10, 0]: the minimum comes first"),
    "range not numbers": (GOOD.replace("interval: 1}", "interval: 1, range: [low, high]}"),
                          "sensors[1](door).range: expected a list of numbers"),
    "unknown deadband key": (GOOD.replace("interval: 1}", "interval: 1, deadband: {absolute: 1}}"),
                             "sensors[1](door).deadband.absolute: unknown key"),
    "channels on a one-valued sensor": (GOOD.replace("interval: 1}", "interval: 1, channels: {x: {}}}"),
                                        "sensors[1](door).channels: this sensor has one value"),
    "analog volts with scale": (GOOD.replace("pin: 0,", "pin: 0, output: volts,"),
                                "sensors[0](temperature).output: scale and offset apply to output: scaled"),
    "bad pull": (GOOD.replace("pin: 4,", "pin: 4, pull: sideways,"), "sensors[1](door).pull: 'sideways' is not"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_config_names_file_key_and_fix_and_exits_2(config_dir, capsys, name):
    text, expected = BAD[name]
    code, out, err = check(config_dir, text, capsys)
    assert code == 2
    assert out == ""
    assert expected in err, err
    assert "Traceback" not in err
    for line in err.splitlines():
        assert line.startswith(str(config_dir / "config.yaml") + ":"), line


def test_every_problem_is_reported_at_once(config_dir, capsys):
    text = GOOD.replace("port: 8883", "port: eighty").replace("type: digital", "type: digitl") \
        .replace("certs/ca.crt", "certs/nope.crt")
    code, _, err = check(config_dir, text, capsys)
    assert code == 2
    assert len(err.splitlines()) == 3, err


def test_every_key_of_a_section_that_cannot_be_built_is_still_judged(tmp_path):
    # The broker is a URL, so no mqtt section can be built: its other keys are still read and named.
    path = tmp_path / "config.yaml"
    path.write_text("mqtt: {host: 'mqtts://x:1', inflight: 0, clean_session: 'no', session_expiry: .nan}\n"
                    "board: simulated\nstate_dir: %s\n" % tmp_path)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    keys = [p.split(": ")[1] for p in caught.value.problems]
    assert keys == ["mqtt.host", "mqtt.inflight", "mqtt.clean_session", "mqtt.session_expiry",
                    "mqtt.session_expiry"], caught.value.problems


def test_a_config_error_is_the_agents_config_error_with_each_problems_key(tmp_path):
    from agent import errors
    from agent.config.problems import FileProblem
    from agent.config.reader import read_text

    path = tmp_path / "config.yaml"
    path.write_text("mqtt: {host: broker, tls: {ca_file: nope.crt}}\nboard: nope\nstate_dir: %s\n" % tmp_path)
    with pytest.raises(errors.ConfigError) as caught:
        config.load(path)
    assert isinstance(caught.value, config.ConfigError)
    assert len(caught.value.problems) == 2 and str(caught.value) == "\n".join(caught.value.problems)
    # Chosen by key path, not by words: everything but what is under mqtt.tls.
    assert caught.value.outside("mqtt.tls") == [p for p in caught.value.problems if ": board: " in p]
    assert caught.value.outside("mqtt") == caught.value.outside("mqtt.tls")
    with pytest.raises(errors.ConfigError) as unreadable:
        read_text(tmp_path)
    assert isinstance(unreadable.value, FileProblem) and "not a regular file" in str(unreadable.value)


def test_a_world_readable_private_key_is_refused_with_the_fix(config_dir, capsys):
    (config_dir / "certs" / "client.key").chmod(0o644)
    code, _, err = check(config_dir, GOOD, capsys)
    assert code == 2
    assert "mqtt.tls.key_file:" in err and "is readable by every user" in err and "chmod 600" in err


def test_a_key_that_does_not_match_the_certificate_is_named(config_dir, capsys):
    other = pki.issue_device(config_dir / "certs", "thunder99")
    text = GOOD.replace("certs/client.key", str(other.key_file))
    code, _, err = check(config_dir, text, capsys)
    assert code == 2
    assert "mqtt.tls.key_file:" in err and "is not the private key of" in err


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    code = cli.main(["check-config", "-c", str(tmp_path / "absent.yaml")])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == "%s: cannot read the config file: No such file or directory" % (tmp_path / "absent.yaml")


def test_run_refuses_a_bad_config_the_same_way(config_dir, capsys):
    path = config_dir / "config.yaml"
    path.write_text(GOOD.replace("port: 8883", "port: 0"))
    assert cli.main(["run", "-c", str(path)]) == 2
    assert "mqtt.port: 0 is below the minimum 1" in capsys.readouterr().err


def test_the_installed_command_prints_no_traceback(config_dir):
    (config_dir / "config.yaml").write_text("mqtt: [\n")
    command = shutil.which("edison-agent", path=str(Path(sys.executable).parent)) or ""
    argv = [command] if command else [sys.executable, "-m", "agent"]
    result = subprocess.run(argv + ["check-config", "-c", str(config_dir / "config.yaml")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "invalid YAML" in result.stderr, result.stderr


def test_board_mraa_without_mraa_installed_is_a_config_error(config_dir, tmp_path):
    text = textwrap.dedent(GOOD).replace("board: simulated", "board: mraa").replace(
        "iotgateway1", "127.0.0.1")
    (config_dir / "config.yaml").write_text(text)
    result = subprocess.run([sys.executable, "-m", "agent", "run", "-c", str(config_dir / "config.yaml")],
                            capture_output=True, text=True, timeout=30, cwd=str(ROOT))
    assert result.returncode == 2
    assert "board: the mraa Python module cannot be imported" in result.stderr
    assert "Traceback" not in result.stderr


def test_processing_keys_are_typed_and_reach_each_value(config_dir, capsys):
    text = GOOD.replace("interval: 1}", "interval: 1, phase: 0.5, filter: {median: 5}, range: [0, 1], "
                                        "deadband: {abs: 0.5, max_silence: 60}, oversample: 3}")
    code, out, err = check(config_dir, text, capsys)
    assert code == 0, err
    door = config.load(config_dir / "config.yaml").sensors[1]
    assert (door.phase, door.oversample) == (0.5, 3)
    processing = door.channels[0].processing
    assert processing.filter is not None and processing.deadband is not None
    assert processing.filter.kind == "median" and processing.filter.size == 5
    assert processing.range == (0.0, 1.0)
    assert processing.deadband.abs == 0.5 and processing.deadband.max_silence == 60
