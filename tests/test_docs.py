"""The reference docs keep up with the code: every key the loader accepts is documented."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from agent.config import schema as config
from agent.config import sensor_config
from agent.hardware import sensors
from conftest import ROOT

DOC = (ROOT / "docs" / "configuration.md").read_text()
SENSORS_DOC = (ROOT / "docs" / "sensors.md").read_text()
DOCUMENTED = set(re.findall(r"^\| `([a-z_.]+)` \|", DOC, flags=re.MULTILINE))

KEYS = (
    [k for k in config.TOP_KEYS if k not in ("device", "mqtt", "sensors", "spool", "batch", "commands")]
    + ["spool.%s" % k for k in config.SPOOL_KEYS]
    + ["commands.%s" % k for k in config.COMMANDS_KEYS]
    + ["batch.%s" % k for k in config.BATCH_KEYS]
    + ["device.%s" % k for k in config.DEVICE_KEYS]
    + ["mqtt.%s" % k for k in config.MQTT_KEYS if k != "reconnect"]
    + ["mqtt.reconnect.%s" % k for k in config.RECONNECT_KEYS]
    + ["mqtt.tls.%s" % k for k in config.TLS_KEYS]
    + list(sensor_config.SENSOR_KEYS)
)


@pytest.mark.parametrize("key", KEYS)
def test_every_config_key_has_a_row_in_the_reference(key):
    assert key in DOCUMENTED


@pytest.mark.parametrize("kind", sorted(sensors.DRIVERS))
def test_every_sensor_type_and_option_is_documented(kind):
    section = SENSORS_DOC.split("## `%s`" % kind)[1].split("\n## ")[0]
    for field in dataclasses.fields(sensors.DRIVERS[kind].Options):
        assert "| `%s` |" % field.name in section, field.name


def test_the_readme_shows_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def _sensor_examples():
    blocks = re.findall(r"```yaml\n(.*?)```", SENSORS_DOC, flags=re.DOTALL)
    return [yaml.safe_dump([sensor], default_flow_style=True).strip()
            for block in blocks for sensor in (yaml.safe_load(block) or [])]


@pytest.mark.parametrize("example", _sensor_examples())
def test_every_example_in_the_sensor_guide_is_a_valid_config(example, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("mqtt: {host: localhost}\nboard: simulated\nstate_dir: state\nsensors: %s\n" % example)
    config.load(path)
