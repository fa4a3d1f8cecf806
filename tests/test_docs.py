"""The reference docs keep up with the code: every key the loader accepts is documented."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from agent.config import schema as config
from agent.config import sensor_config
from agent.config.fields import choices_of, is_section, key_paths, keys_of, shown_default
from agent.hardware import sensors
from conftest import ROOT

DOC = (ROOT / "docs" / "configuration.md").read_text()
SENSORS_DOC = (ROOT / "docs" / "sensors.md").read_text()
DOCUMENTED = set(re.findall(r"^\| `([a-z_.]+)` \|", DOC, flags=re.MULTILINE))
ROWS = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_.]+)` \|.*$", DOC, flags=re.MULTILINE)}
HEADINGS = re.findall(r"^#+ .*$", DOC, flags=re.MULTILINE)


def schema_keys():
    """(key as the reference names it, dataclass, field) for every key the loader reads, from the fields."""
    keys = []
    for section, cls in config.SECTIONS:
        for path, name in key_paths(cls):
            if not is_section(cls, name) and not (cls is config.AgentConfig and name == "sensors"):
                prefix = "" if section in ("", "sensors[]") else section + "."
                keys.append((prefix + path, cls, name))
    return keys


KEYS = [key for key, _, _ in schema_keys()] + list(sensor_config.SENSOR_KEYS)


def test_the_keys_come_from_the_schema_and_cover_every_section():
    # Every section's dataclass has its keys listed, and the top level's sections are among them.
    assert {"device.id", "board", "mqtt.host", "mqtt.reconnect.spread", "mqtt.tls.ca_file", "spool.path",
            "batch.max_readings", "health.file", "commands.rate", "homeassistant.prefix", "interval"} <= set(KEYS)
    assert "path" not in KEYS and "mqtt.password_source" not in KEYS and "mqtt.password_file" in KEYS


@pytest.mark.parametrize("key", KEYS)
def test_every_config_key_has_a_row_in_the_reference(key):
    assert key in DOCUMENTED


@pytest.mark.parametrize("key", keys_of(config.AgentConfig))
def test_every_top_level_key_has_a_row_or_a_heading(key):
    assert key in DOCUMENTED or "%s.id" % key in DOCUMENTED or any("`%s`" % key in h for h in HEADINGS), key


@pytest.mark.parametrize("key, cls, name", schema_keys(), ids=[k for k, _, _ in schema_keys()])
def test_the_reference_gives_each_key_the_default_its_field_declares(key, cls, name):
    default = ROWS[key].split(" | ")[1]
    shown = shown_default(cls, name)
    # A string the reader would take for a number is quoted in the reference: `"1.2"`.
    quoted = '`"%s"`' % shown.strip("`") if shown.startswith("`") else shown
    assert default.startswith(shown) or default.startswith(quoted), (key, default, shown)


@pytest.mark.parametrize("key, cls, name", [k for k in schema_keys() if choices_of(k[1], k[2])],
                         ids=[k for k, c, n in schema_keys() if choices_of(c, n)])
def test_the_reference_names_every_choice_of_a_key(key, cls, name):
    choices = choices_of(cls, name)
    assert choices is not None
    for choice in choices:
        assert "`%s`" % choice in ROWS[key] or '`"%s"`' % choice in ROWS[key], (key, choice)


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
