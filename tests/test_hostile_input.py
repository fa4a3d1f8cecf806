"""Hostile and broken input: whatever arrives as a config file, a number, a name or a command costs at
most that input, with one line naming it, never a traceback, a hang, or the session."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import cli
from agent.config import identifiers, overlay
from agent.config import schema as config
from agent.config.fields import bounds_of, field_kind
from agent.config.reader import MAX_DEPTH
from agent.config.schema import CommandsConfig
from agent.service.commands import BAD_PAYLOAD, Commands, request_from
from conftest import ROOT

BASE = {"device": {"id": "d1"}, "mqtt": {"host": "broker"}, "board": "simulated", "state_dir": "state",
        "sensors": [{"name": "t", "type": "analog", "pin": 0}]}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> Tuple[int, str, str]:
    code = cli.main(["check-config", "-c", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, tree: Any = None, text: Optional[str] = None) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(tree))
    return path


def problems_of(path: Path) -> List[str]:
    try:
        config.load(path)
    except config.ConfigError as exc:
        return exc.problems
    return []


def with_key(key: str, value: Any, tree: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """BASE with `a.b.c` set; `sensors[].x` sets it on the sensor."""
    tree = json.loads(json.dumps(tree or BASE))
    if key.startswith("sensors[]."):
        tree["sensors"][0][key.split(".", 1)[1]] = value
        return tree
    *sections, last = key.split(".")
    node = tree
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value
    return tree


def numeric_keys() -> List[Tuple[str, type, str]]:
    """(key path, dataclass, field) for every int and float setting of the schema."""
    return [((section + "." if section else "") + field.name, cls, field.name)
            for section, cls in config.SECTIONS for field in dataclasses.fields(cls)
            if field_kind(cls, field.name) in (int, float)]


NUMERIC = numeric_keys()


# -- numbers: finite, within the bounds the schema declares ------------------------------


def test_every_numeric_setting_declares_its_bounds_next_to_its_field():
    assert len(NUMERIC) >= 25
    missing = [key for key, cls, name in NUMERIC if bounds_of(cls, name) is None]
    assert missing == []


def test_the_reference_states_each_numeric_settings_bounds():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for key, cls, name in NUMERIC:
        bounds = bounds_of(cls, name)
        assert bounds is not None
        row = re.search(r"^\| `%s` \|.*$" % re.escape(key.replace("sensors[].", "")), doc, flags=re.MULTILINE)
        assert row is not None, key
        assert bounds.text() in row.group(0), (key, bounds.text())


@pytest.mark.parametrize("key", [k for k, _, _ in NUMERIC])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10 ** 400])
def test_nan_infinity_and_huge_numbers_are_refused_at_load_with_the_key_and_its_bounds(tmp_path, key, value):
    tree = with_key(key, value)
    if key.startswith("mqtt.") and key.split(".")[1] in ("session_expiry", "message_expiry"):
        tree["mqtt"]["protocol"] = 5
    if key == "commands.max_interval" or key == "commands.min_interval":
        tree["commands"]["enabled"] = True
    # yaml.safe_dump writes .nan, .inf, -.inf and the integer as they are.
    problems = problems_of(write(tmp_path, tree))
    where = key.replace("sensors[].", "sensors[0](t).")
    assert len(problems) == 1, problems
    assert problems[0].startswith("%s: %s: " % (tmp_path / "config.yaml", where))
    assert len(problems[0]) < 300


@SETTINGS
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 30, 10 ** 30)))
def test_a_sensor_interval_loads_exactly_when_it_is_finite_and_within_its_bounds(tmp_path_factory, value):
    path = write(tmp_path_factory.mktemp("c"), with_key("sensors[].interval", value))
    bounds = bounds_of(config.SensorConfig, "interval")
    assert bounds is not None
    good = math.isfinite(value) and bounds.minimum <= value <= bounds.maximum
    if good:
        assert config.load(path).sensors[0].interval == float(value)
    else:
        assert [p.split(": ")[1] for p in problems_of(path)] == ["sensors[0](t).interval"]


def test_nan_in_a_polynomial_or_a_range_is_refused(tmp_path):
    for key, value in (("calibration", {"polynomial": [0, math.nan]}), ("range", [0, math.inf])):
        problems = problems_of(write(tmp_path, with_key("sensors[]." + key, value)))
        assert len(problems) == 1 and "finite" in problems[0], problems


def test_a_driver_option_is_finite_and_an_analog_pin_is_one_the_board_has(tmp_path):
    assert "finite" in problems_of(write(tmp_path, with_key("sensors[].vref", math.nan)))[0]
    problems = problems_of(write(tmp_path, with_key("sensors[].pin", 6)))
    assert len(problems) == 1 and "sensors[0](t).pin: 6 is not an analog pin: the board has A0-A5" in problems[0]


def test_the_overlay_ignores_an_interval_that_is_not_finite(tmp_path):
    path = tmp_path / "overrides.yaml"
    path.write_text("sensors:\n  t: {interval: .nan}\n  u: {interval: .inf}\n  v: {interval: 30}\n")
    assert overlay.load(path) == {"v": 30.0}


# -- YAML: regular files, bounded size, depth and aliases ----------------------------------


def run_check_config(path: Path, memory: int = 512 * 1024 * 1024) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run([sys.executable, "-m", "agent", "check-config", "-c", str(path)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60, preexec_fn=limit)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        lines.append("a%d: &a%d [%s]" % (level, level, ", ".join(["*a%d" % (level - 1)] * width)))
    return "\n".join(lines) + "\ndevice: {id: *a%d}\nmqtt: {host: broker}\n" % (levels - 1)


def test_an_alias_bomb_is_refused_at_once_in_bounded_memory(tmp_path):
    result = run_check_config(write(tmp_path, text=alias_bomb()))
    assert result.returncode == 2, result.stderr[-500:]
    assert len(result.stderr.splitlines()) == 1
    assert "expands to more than" in result.stderr and len(result.stderr) < 300


def test_a_wrong_type_message_never_prints_an_expanded_alias(tmp_path):
    # Small enough to load (14,580 values), large enough that its repr would be 200 KB.
    text = alias_bomb(levels=4, width=9).replace("a0: &a0 [x, x, x, x, x, x, x, x, x]", "a0: &a0 [%s]" % (
        ", ".join(["xxxxxxxxxx"] * 20)))
    problems = problems_of(write(tmp_path, text=text))
    assert any("device.id: expected a string, got a list" in p for p in problems), problems
    assert all(len(p) < 300 for p in problems)


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "directory"])
def test_a_config_path_that_is_not_a_regular_file_is_one_line_and_never_blocks(tmp_path, kind):
    path = Path(kind) if kind.startswith("/") else tmp_path / "config.yaml"
    if kind == "fifo":
        os.mkfifo(str(path))
    elif kind == "directory":
        path.mkdir()
    result = run_check_config(path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["%s: the config file is %s, not a regular file: give the path of a YAML "
                                          "file" % (path, {"/dev/zero": "a character device", "fifo":
                                                           "a named pipe (FIFO)", "directory": "a directory"}[kind])]


@pytest.mark.parametrize("name, text, expected", [
    ("20,000-deep nesting", "a: " + "[" * 20000 + "]" * 20000 + "\n", "nested deeper than %d levels" % MAX_DEPTH),
    ("a recursive alias", "a: &a [*a]\n", "an alias inside its own anchor"),
    ("an unhashable key", "? [a, b]\n: 1\nmqtt: {host: broker}\n", "a key may not be a list or a mapping"),
    ("a 5000-digit integer", "mqtt: {host: broker, port: %s}\n" % ("9" * 5000), "invalid YAML"),
    ("an impossible date", "device: {id: 2024-13-45}\n", "invalid YAML"),
    ("a 2 MiB file", "# " + "x" * (2 * 1024 * 1024) + "\n", "larger than 1024 KiB"),
])
def test_yaml_that_would_crash_the_parser_is_one_line_and_exit_2(tmp_path, capsys, name, text, expected):
    code, out, err = check_config(write(tmp_path, text=text), capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and expected in err, err
    assert len(err) < 300


def test_a_long_value_is_quoted_by_its_first_few_dozen_characters(tmp_path):
    problems = problems_of(write(tmp_path, with_key("mqtt.port", "x" * 100000)))
    assert problems == ["%s: mqtt.port: expected an integer, got a string 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'"
                        "... (100000 characters)" % (tmp_path / "config.yaml")]


# -- identifiers and topics ---------------------------------------------------------------


@SETTINGS
@given(device_id=st.text(max_size=80))
def test_a_device_id_loads_exactly_when_it_is_1_to_64_letters_digits_dashes_or_underscores(tmp_path_factory,
                                                                                         device_id):
    path = write(tmp_path_factory.mktemp("c"), with_key("device.id", device_id))
    # What YAML reads back as a string (not `null`, `1`, `true`): the id the config holds.
    if not isinstance(yaml.safe_load(path.read_text())["device"]["id"], str):
        return
    valid = re.fullmatch(r"[A-Za-z0-9_-]{1,64}", device_id) is not None
    problems = problems_of(path)
    if valid:
        assert problems == [] and config.load(path).device_id == device_id
    else:
        assert len(problems) == 1 and ": device.id: " in problems[0] and "\n" not in problems[0]


@pytest.mark.parametrize("device_id, says", [
    ("a\x00b", "'a\\x00b' holds U+0000 (a NUL character)"),
    ("a\x01b", "may hold only letters, digits, '-' and '_'"),
    ("line\nbreak", "may hold only letters"),
    ("x" * 70000, "is 70000 characters long; at most 64"),
    ("edison.lab", "use 'edison-lab'"),
    ("site/edison", "RabbitMQ maps '.' and '/'"),
])
def test_a_device_id_a_broker_would_refuse_or_misroute_is_one_line_with_the_fix(tmp_path, device_id, says):
    problems = problems_of(write(tmp_path, with_key("device.id", device_id)))
    assert len(problems) == 1 and says in problems[0] and "\n" not in problems[0], problems
    assert len(problems[0]) < 400


@pytest.mark.parametrize("key, value, says", [
    ("mqtt.status_topic", "edison/{device_id}/telemetry", "mqtt.status_topic: 'edison/d1/telemetry' is also the "
                                                          "telemetry topic"),
    ("mqtt.topic", "edison/{device_id}/\x00", "holds U+0000"),
    ("mqtt.topic", "edison/{device_id}/\n", "holds a control character"),
    ("mqtt.topic", "t/" + "x" * 70000, "is 70002 bytes long; MQTT allows 65535"),
    ("mqtt.topic", "edison/{device_id}/+", "holds '+' or '#'"),
    ("mqtt.host", "", "mqtt.host: is empty"),
    ("mqtt.host", "mqtts://broker.example:8883", "is a URL: give the host only (e.g. 'broker.example'), and "
                                                 "the port in mqtt.port"),
    ("mqtt.host", "broker.example:8883", "give the host only ('broker.example'), and the port in mqtt.port"),
    ("mqtt.client_id", "a\x00b", "holds U+0000"),
    ("mqtt.client_id", "a\x1bb", "holds a control character"),
])
def test_a_topic_or_host_a_broker_would_refuse_is_refused_at_load(tmp_path, key, value, says):
    problems = problems_of(write(tmp_path, with_key(key, value)))
    assert len(problems) == 1 and says in problems[0], problems


@pytest.mark.parametrize("key", ["state_dir", "spool.path", "health.file", "log_level", "sensors[].unit",
                                 "sensors[].name", "mqtt.tls.ca_file", "mqtt.host"])
def test_a_nul_in_any_string_is_refused_before_it_reaches_a_path_or_a_topic(tmp_path, key):
    problems = problems_of(write(tmp_path, with_key(key, "a\x00b")))
    assert len(problems) == 1 and "'a\\x00b' holds U+0000 (a NUL character)" in problems[0], problems


@pytest.mark.parametrize("key, value, says", [
    ("sensors[].unit", "u" * 1000, "is 1000 characters long; a unit is at most 32"),
    ("sensors[].calibration", {"polynomial": [1] * 100000}, "expected 1-16 numbers, got 100000"),
])
def test_what_travels_in_every_reading_or_runs_at_every_reading_is_bounded(tmp_path, key, value, says):
    problems = problems_of(write(tmp_path, with_key(key, value)))
    assert len(problems) == 1 and says in problems[0], problems


def test_a_command_topic_that_covers_the_agents_own_topics_is_refused(tmp_path):
    tree = with_key("commands.topic", "edison/{device_id}")
    tree["commands"]["enabled"] = True
    problems = problems_of(write(tmp_path, tree))
    assert len(problems) >= 1 and all(": commands.topic: the agent subscribes to 'edison/d1/+', which covers"
                                      in p for p in problems), problems
    assert "it would read its own messages as commands" in problems[0]


def test_a_reply_topic_whose_replies_could_land_on_the_agents_own_topics_is_refused(tmp_path):
    tree = with_key("commands.reply_topic", "edison/{device_id}")
    tree["commands"]["enabled"] = True
    problems = problems_of(write(tmp_path, tree))
    assert len(problems) == 3 and "commands.reply_topic: a command with id 'telemetry' would be answered on " \
                                  "mqtt.topic ('edison/d1/telemetry')" in problems[0], problems


def test_an_ipv6_address_is_a_host(tmp_path):
    assert config.load(write(tmp_path, with_key("mqtt.host", "::1"))).mqtt.host == "::1"


@pytest.mark.parametrize("topic_filter, topic, expected", [
    ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/#", "a", True), ("a/#", "a/b/c", True),
    ("+/x", "$SYS/x", False), ("#", "$SYS/x", False), ("a/b", "a/b", True), ("a/+/c", "a/b/d", False),
])
def test_a_filter_matches_as_mqtt_says(topic_filter, topic, expected):
    assert identifiers.matches(topic_filter, topic) is expected


# -- commands: a poisoned message costs one command, never a topic the broker refuses --------


CMD, REPLY = "edison/d1/cmd", "edison/d1/reply"
OWN = ("edison/d1/telemetry", "edison/d1/status", "edison/d1/health")


class Handler:
    def request_read(self, sensor: Optional[str]) -> List[str]:
        return ["t"]

    def set_interval(self, sensor: str, seconds: float, persist: bool) -> None:
        pass

    def schedule_reload(self, why: str) -> None:
        pass

    def publish_health(self) -> None:
        pass


def commands(**more: Any) -> Tuple[Commands, List[Tuple[str, Dict[str, Any]]]]:
    sent: List[Tuple[str, Dict[str, Any]]] = []

    def publish(topic: str, payload: bytes, correlation: Optional[bytes]) -> bool:
        sent.append((topic, json.loads(payload)))
        return True

    cfg = CommandsConfig(enabled=True, topic=CMD, reply_topic=REPLY, rate=1000, burst=10000, agent_topics=OWN,
                         **more)
    return Commands(cfg, Handler(), publish), sent


def ask(cmds: Commands, payload: bytes, response_topic: Optional[str] = None, command: str = "ping") -> None:
    properties = type("Props", (), {"ResponseTopic": response_topic})() if response_topic is not None else None
    cmds.handle(request_from("%s/%s" % (CMD, command), payload, properties, CMD))


def test_a_command_id_holding_nul_is_answered_on_the_safe_reply_topic():
    cmds, sent = commands()
    ask(cmds, json.dumps({"id": "a\u0000b"}).encode())
    assert sent == [(REPLY + "/unknown", {"id": None, "ok": False, "error": BAD_PAYLOAD, "detail": sent[0][1][
        "detail"]})]
    assert "last level of the reply topic" in sent[0][1]["detail"]


@settings(max_examples=300, deadline=None)
@given(request_id=st.one_of(st.text(), st.integers(), st.floats(), st.none(), st.booleans()),
       response_topic=st.one_of(st.none(), st.text(), st.sampled_from(OWN + (CMD + "/reload", REPLY + "/#",
                                                                             "edison/other/cmd/reload",
                                                                             REPLY + "/console"))),
       command=st.text(min_size=1).filter(lambda c: "/" not in c))
def test_whatever_a_command_holds_every_answer_goes_to_a_valid_topic_under_the_reply_prefix(request_id,
                                                                                         response_topic, command):
    cmds, sent = commands()
    ask(cmds, json.dumps({"id": request_id}).encode(), response_topic, command)
    assert sent, "every command is answered at least on the reply topic"
    for topic, _ in sent:
        assert identifiers.topic_problem(topic) is None
        assert topic.startswith(REPLY + "/")
        assert topic not in OWN and not identifiers.matches(CMD + "/+", topic)


@pytest.mark.parametrize("response_topic", [
    OWN[0], OWN[1], CMD + "/reload", "edison/other/cmd/reload", REPLY + "/#", REPLY + "/+/x", "a\x00b", "",
])
def test_a_response_topic_outside_the_reply_prefix_or_with_wildcards_gets_no_answer(response_topic, caplog):
    cmds, sent = commands()
    ask(cmds, b'{"id": "7"}', response_topic)
    assert [topic for topic, _ in sent] == [REPLY + "/7"]


def test_response_topics_widens_where_answers_may_go_but_never_to_the_agents_own_topics():
    cmds, sent = commands(response_topics=("ops/#", "edison/#"))
    ask(cmds, b'{"id": "7"}', "ops/console/1")
    ask(cmds, b'{"id": "8"}', OWN[0])
    assert [topic for topic, _ in sent] == [REPLY + "/7", "ops/console/1", REPLY + "/8"]


@pytest.mark.parametrize("payload", [b"[" * 100000 + b"]" * 100000, b'{"id": "1", "pad": "' + b"x" * 70000 + b'"}',
                                     b'{"id": 1' + b"0" * 5000 + b'}', b'{"id": "1", "seconds": NaN}'])
def test_a_payload_that_would_crash_the_parser_is_a_bad_payload_answer(payload):
    cmds, sent = commands()
    ask(cmds, payload, command="set-interval")
    assert [(topic, body["ok"], body["error"]) for topic, body in sent] == [(sent[0][0], False, BAD_PAYLOAD)]


@pytest.mark.parametrize("seconds", ["NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 400])
def test_set_interval_refuses_a_number_that_is_not_finite_or_out_of_range(seconds):
    cmds, sent = commands()
    ask(cmds, b'{"id": "1", "sensor": "t", "seconds": %s}' % seconds.encode(), command="set-interval")
    assert sent[0][1]["ok"] is False and sent[0][1]["error"] in (BAD_PAYLOAD, "out of range")


# -- config files and paths ----------------------------------------------------------------


def test_a_spool_path_that_is_a_directory_is_refused(tmp_path):
    (tmp_path / "spooldir").mkdir()
    problems = problems_of(write(tmp_path, with_key("spool.path", "spooldir")))
    assert len(problems) == 1 and "spool.path: %s is a directory" % (tmp_path / "spooldir") in problems[0]


def test_a_spool_path_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    problems = problems_of(write(tmp_path, with_key("spool.path", "file/spool.db")))
    assert problems == ["%s: spool.path: %s: a directory above it is a file" % (tmp_path / "config.yaml",
                                                                               tmp_path / "file" / "spool.db")]


def test_no_sensors_at_all_is_a_warning_that_says_what_the_agent_will_still_do(tmp_path, capsys):
    tree = dict(BASE, sensors=[])
    code, out, err = check_config(write(tmp_path, tree), capsys)
    assert code == 0, err
    assert "warning: sensors: none configured: the agent connects and reports its health, but publishes no " \
           "readings" in out


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="drops root's power to bypass file modes with setpriv")
def test_check_config_by_a_user_who_cannot_reach_the_health_file_warns(tmp_path):
    # Root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH obeys file modes like any other user.
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o000)
    health = closed / "sub" / "health.json"
    path = write(tmp_path, dict(BASE, state_dir=str(tmp_path / "state"), health={"file": str(health)}))
    try:
        result = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable,
                                 "-m", "agent", "check-config", "-c", str(path)], cwd=str(ROOT),
                                capture_output=True, text=True, timeout=60)
    finally:
        closed.chmod(0o700)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "warning: health.file: %s cannot be written by this user" % health in result.stdout


# -- whatever the file holds: a ConfigError or a config, never anything else ----------------


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 40, 10 ** 40), st.floats(),
                    st.text(max_size=30), st.sampled_from(["", "a\x00b", "edison/{device_id}/#", "{x}", "{",
                                                           "mqtts://h:1", ".nan", "x" * 300]))
KEY_TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["a\nb", "k" * 300, "\x1b[2J", "\u2028"]))
TREES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(KEY_TEXT, inner, max_size=4)),
                     max_leaves=20)
KEYS = ["device.id", "mqtt.host", "mqtt.port", "mqtt.topic", "mqtt.tls", "mqtt.reconnect", "mqtt.username",
        "mqtt.protocol", "spool", "spool.path", "batch", "health", "health.file", "commands", "commands.topic",
        "commands.response_topics", "sensors", "sensors[].name", "sensors[].type", "sensors[].channels",
        "sensors[].calibration", "sensors[].filter", "sensors[].deadband", "sensors[].range", "state_dir",
        "log_level", "board"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=TREES)
def test_any_value_at_any_key_is_a_config_or_one_line_problems(tmp_path_factory, key, value):
    path = write(tmp_path_factory.mktemp("c"), with_key(key, value))
    for problem in problems_of(path):
        assert problem.isprintable() and len(problem) < 1000, problem


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_any_text_as_a_config_file_is_a_config_or_one_line_problems(tmp_path_factory, text):
    path = write(tmp_path_factory.mktemp("c"), text=text)
    for problem in problems_of(path):
        assert problem.isprintable() and len(problem) < 1000, problem
