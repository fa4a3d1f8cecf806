"""Logging to the journal: the field mapping, and a real systemd-journald reading the agent's entries back.

The end-to-end part runs systemd-journald standalone in a private mount namespace (its own /run
and /var/log on tmpfs), as root, which CI is. The agent's logging runs in children whose stderr
is connected to journald's stream socket (systemd-cat does that, as systemd does for a service),
in the four situations the board can be in: with or without systemd-python, on systemd 231+
($JOURNAL_STREAM set) or older, like the Edison's 216 (no $JOURNAL_STREAM).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from agent.service import logging_setup
from conftest import ROOT

JOURNALD_CANDIDATES = ("/usr/lib/systemd/systemd-journald", "/lib/systemd/systemd-journald")
MODES = ("native-231", "native-216", "stream-231", "stream-216")


def _binding() -> Any:
    try:
        from systemd import journal
    except ImportError:
        pytest.fail("systemd-python is not installed, so the journal handler cannot be tested: "
                    "apt-get install libsystemd-dev pkg-config gcc, then pip install 'edison-agent[systemd]' "
                    "(see docs/operations.md)")
    return journal


class Sent:
    """A sender_function for JournalHandler: remembers each call instead of sending it."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, Dict[str, Any]]] = []

    def __call__(self, message: str, **fields: Any) -> None:
        self.calls.append((message, fields))


@pytest.fixture
def journal_log() -> Iterator[Tuple[logging.Logger, Sent]]:
    _binding()
    sent = Sent()
    logger = logging.getLogger("agent.test_journal")
    handler = logging_setup.journal_handler(sender_function=sent)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, sent
    logger.removeHandler(handler)
    logger.propagate = True


def test_structured_fields_reach_the_journal(journal_log):
    log, sent = journal_log
    log.warning("broker %s refused us: %s", "gw", "not authorised",
                extra={"BROKER": "gw:8883", "MQTT_RC": 5, "SENSOR": "temperature", "SEQ": 17,
                       "TLS_ERROR": "certificate verify failed"})
    [(message, fields)] = sent.calls
    assert message == "broker gw refused us: not authorised"
    assert fields["SYSLOG_IDENTIFIER"] == "edison-agent"
    assert fields["PRIORITY"] == "4"
    assert fields["LOGGER"] == "agent.test_journal"
    for name, value in (("BROKER", "gw:8883"), ("MQTT_RC", 5), ("SENSOR", "temperature"), ("SEQ", 17),
                        ("TLS_ERROR", "certificate verify failed")):
        assert fields[name] == value
    # Only names journald keeps are sent: none of the record's own lower-case attributes.
    assert all(name.isupper() for name in fields), sorted(fields)


def test_every_field_the_agent_documents_passes_journalds_name_rule(journal_log):
    log, sent = journal_log
    log.info("x", extra={name: "v" for name in logging_setup.JOURNAL_FIELDS})
    [(_, fields)] = sent.calls
    assert set(logging_setup.JOURNAL_FIELDS) <= set(fields)


def test_a_lower_case_extra_is_upper_cased_not_lost(journal_log):
    log, sent = journal_log
    log.info("reading", extra={"sensor": "light", "Seq": 3})
    [(_, fields)] = sent.calls
    assert fields["SENSOR"] == "light"
    assert fields["SEQ"] == 3


def test_a_record_cannot_override_the_handlers_own_fields(journal_log):
    log, sent = journal_log
    log.error("boom", extra={"PRIORITY": "7", "SYSLOG_IDENTIFIER": "other", "_PID": "1", "9LIVES": "x"})
    [(_, fields)] = sent.calls
    assert fields["PRIORITY"] == "3"
    assert fields["SYSLOG_IDENTIFIER"] == "edison-agent"
    assert "_PID" not in fields and "9LIVES" not in fields


def test_a_traceback_is_part_of_the_message(journal_log):
    log, sent = journal_log
    try:
        raise ValueError("bad reading")
    except ValueError:
        log.exception("sensor failed", extra={"SENSOR": "temperature"})
    [(message, fields)] = sent.calls
    assert message.startswith("sensor failed\nTraceback")
    assert "ValueError: bad reading" in message
    assert fields["PRIORITY"] == "3"


@pytest.mark.parametrize("level, priority", [
    (logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (logging.CRITICAL, 2),
    (logging.INFO + 5, 4), (logging.CRITICAL + 10, 1),
])
def test_levels_map_to_syslog_priorities(level, priority, journal_log):
    log, sent = journal_log
    log.log(level, "x")
    assert sent.calls[0][1]["PRIORITY"] == str(priority)
    assert logging_setup.syslog_priority(level) == priority
    # The same mapping as the binding's own handler.
    assert _binding().JournalHandler.map_priority(level) == priority


def test_the_stream_format_carries_the_priority_prefix():
    record = logging.LogRecord("agent.sampling.sampler", logging.WARNING, __file__, 1, "sensor %s stale", ("t",), None)
    handler = logging_setup.stream_handler(logging_setup.FORMAT_JOURNAL_STREAM, syslog_prefix=True)
    assert handler.filter(record)
    assert handler.format(record) == "<4>agent.sampling.sampler: sensor t stale"


def test_every_line_of_a_traceback_keeps_the_priority_on_stderr():
    try:
        raise ValueError("bad reading")
    except ValueError:
        record = logging.LogRecord("agent.sampling.sampler", logging.ERROR, __file__, 1, "sensor failed", (),
                                   sys.exc_info())
    handler = logging_setup.stream_handler(logging_setup.FORMAT_JOURNAL_STREAM, syslog_prefix=True)
    handler.filter(record)
    lines = handler.format(record).splitlines()
    assert lines[0] == "<3>agent.sampling.sampler: sensor failed"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ValueError: bad reading"
    assert all(line.startswith("<3>") for line in lines)


def test_journal_stream_must_match_stderr(tmp_path):
    with open(tmp_path / "stderr", "w") as f:
        st = os.fstat(f.fileno())
        fd = f.fileno()
        assert logging_setup.stderr_is_journal({"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino)}, fd)
        # A stale variable (stderr redirected by a wrapper) must not count.
        assert not logging_setup.stderr_is_journal({"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino + 1)}, fd)
        assert not logging_setup.stderr_is_journal({"JOURNAL_STREAM": "garbage"}, fd)
        assert not logging_setup.stderr_is_journal({}, fd)


def test_a_socket_that_is_not_journald_does_not_count(tmp_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(tmp_path / "stdout"))
        server.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(tmp_path / "stdout"))
            assert not logging_setup.stderr_is_journal({}, client.fileno())
    a, b = socket.socketpair()
    with a, b:
        assert not logging_setup.stderr_is_journal({}, a.fileno())


def test_elsewhere_plain_stderr_with_timestamps(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logging_setup.configure("info")
        assert logging_setup.destination() == "terminal"
        [handler] = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        record = logging.LogRecord("agent.x", logging.INFO, __file__, 1, "a line", None, None)
        expected = logging.Formatter(logging_setup.FORMAT_TERMINAL).format(record)
        assert handler.formatter is not None and handler.formatter.format(record) == expected
        assert root.level == logging.INFO
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


# --- a real systemd-journald ---------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import logging, os, sys
    mode = sys.argv[1]
    if mode.startswith("stream"):
        sys.modules["systemd"] = None  # an image without systemd-python
    if mode.endswith("231"):  # what systemd 231+ sets for a service whose stderr is the journal
        st = os.fstat(2)
        os.environ["JOURNAL_STREAM"] = "%d:%d" % (st.st_dev, st.st_ino)
    else:  # systemd 216 sets nothing
        os.environ.pop("JOURNAL_STREAM", None)
    from agent.service import logging_setup
    logging_setup.configure("debug")
    log = logging.getLogger("agent.sampling.sampler")
    log.info("%s: destination %s", mode, logging_setup.destination())
    log.debug("%s: debug line", mode)
    log.warning("%s: sensor read failed", mode, extra={"SENSOR": "temperature"})
    log.error("%s: broker refused", mode, extra={"BROKER": "gw:8883", "MQTT_RC": 5})
    try:
        raise ValueError("bad reading")
    except ValueError:
        log.exception("%s: sensor crashed", mode, extra={"SENSOR": "light"})
""")

NAMESPACE_SCRIPT = textwrap.dedent("""
    set -eu
    mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /var/log
    mkdir -p /run/systemd/journald.conf.d
    # Only what the test sends: not the host's kernel log, nothing forwarded anywhere.
    printf '[Journal]\\nStorage=volatile\\nReadKMsg=no\\nForwardToSyslog=no\\nForwardToKMsg=no\\n%s\\n' \\
        'ForwardToConsole=no\\nForwardToWall=no\\nRateLimitIntervalSec=0' > /run/systemd/journald.conf.d/test.conf
    "$JOURNALD" &
    journald=$!
    trap 'kill $journald 2>/dev/null; wait $journald 2>/dev/null || true' EXIT
    i=0
    until [ -S /run/systemd/journal/stdout ] && [ -S /run/systemd/journal/socket ]; do
        i=$((i + 1)); [ $i -le 100 ] || { echo "journald did not start" >&2; exit 1; }; sleep 0.05
    done
    for mode in $MODES; do
        # A child may fail on purpose (a refused config exits 2): the test reads what it logged.
        systemd-cat --identifier=edison-agent "$PYTHON" -c "$CHILD" "$mode" || true
    done
    journalctl --sync
    journalctl --no-pager -o json SYSLOG_IDENTIFIER=edison-agent
""")


def _require(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(what)


def _journal_of(child: str, **env: str) -> List[Dict[str, Any]]:
    """Run `child` in each mode under a standalone journald; its entries, read back with journalctl -o json."""
    _require(os.geteuid() == 0, "the journald test runs journald in a private mount namespace and needs root "
                                "(CI runs as root)")
    journald = next((p for p in JOURNALD_CANDIDATES if os.access(p, os.X_OK)), None)
    for tool in ("unshare", "systemd-cat", "journalctl"):
        _require(shutil.which(tool) is not None, "%s is missing: apt-get install systemd util-linux" % tool)
    _require(journald is not None, "systemd-journald is missing: apt-get install systemd")
    _binding()
    full_env = dict(os.environ, JOURNALD=str(journald), MODES=" ".join(MODES), PYTHON=sys.executable, CHILD=child,
                    PYTHONPATH=str(ROOT), **env)
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE_SCRIPT],
                            env=full_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _by_mode(journal: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    # Each child is one process: its entries are those of its PID (traceback lines name no mode).
    by_pid: Dict[str, List[Dict[str, Any]]] = {}
    for entry in journal:
        by_pid.setdefault(entry["_PID"], []).append(entry)
    entries: Dict[str, List[Dict[str, Any]]] = {}
    for pid_entries in by_pid.values():
        [mode] = {m for m in MODES for e in pid_entries if "%s: " % m in str(e["MESSAGE"])}
        entries[mode] = pid_entries
    assert sorted(entries) == sorted(MODES), journal
    return entries


@pytest.fixture(scope="module")
def journal_entries() -> Dict[str, List[Dict[str, Any]]]:
    """The journal entries of each mode's child."""
    return _by_mode(_journal_of(CHILD))


def _by_message(entries: List[Dict[str, Any]], text: str) -> Dict[str, Any]:
    [entry] = [e for e in entries if e["MESSAGE"].endswith(text)]
    return entry


@pytest.mark.parametrize("mode", ["native-231", "native-216"])
def test_journald_keeps_the_agents_fields(mode, journal_entries):
    entries = journal_entries[mode]
    assert _by_message(entries, "destination journal")  # chosen on its own, 216 included
    for entry in entries:
        assert entry["SYSLOG_IDENTIFIER"] == "edison-agent"
        assert entry["_TRANSPORT"] == "journal"
        assert entry["LOGGER"] == "agent.sampling.sampler"
    assert _by_message(entries, "debug line")["PRIORITY"] == "7"
    warning = _by_message(entries, "sensor read failed")
    assert (warning["PRIORITY"], warning["SENSOR"]) == ("4", "temperature")
    error = _by_message(entries, "broker refused")
    assert (error["PRIORITY"], error["BROKER"], error["MQTT_RC"]) == ("3", "gw:8883", "5")
    assert "SENSOR" not in error
    crash = _by_message(entries, "ValueError: bad reading")  # one entry, traceback included
    assert (crash["PRIORITY"], crash["SENSOR"]) == ("3", "light")
    assert "sensor crashed\nTraceback (most recent call last):" in crash["MESSAGE"]
    # journald kept no field the agent did not mean to send.
    assert not [name for name in warning if name.lower() == name]


@pytest.mark.parametrize("mode", ["stream-231", "stream-216"])
def test_without_the_binding_journald_still_gets_the_priorities(mode, journal_entries):
    entries = journal_entries[mode]
    assert _by_message(entries, "destination journal-stream")
    for entry in entries:
        assert entry["SYSLOG_IDENTIFIER"] == "edison-agent"
        assert entry["_TRANSPORT"] == "stdout"
        assert not entry["MESSAGE"].startswith("<")  # journald took the prefix
    assert [_by_message(entries, text)["PRIORITY"] for text in ("debug line", "sensor read failed", "broker refused")
            ] == ["7", "4", "3"]
    # A traceback is one entry per line on stderr; each keeps the error priority.
    start = [e for e in entries if e["MESSAGE"].endswith("sensor crashed")]
    assert len(start) == 1
    traceback = entries[entries.index(start[0]):]
    assert traceback[1]["MESSAGE"] == "Traceback (most recent call last):"
    assert traceback[-1]["MESSAGE"] == "ValueError: bad reading"
    assert {e["PRIORITY"] for e in traceback} == {"3"}
    # The structured fields need systemd-python: on stderr they are lost (docs/operations.md says so).
    assert "SENSOR" not in _by_message(entries, "sensor read failed")


# `edison-agent run` with a config it refuses, started as systemd starts a service (stderr is the
# journal), in the same four situations. The mode goes first, on stdout, to tell the runs apart.
START_CHILD = CHILD.split("from agent import logging_setup")[0] + textwrap.dedent("""
    print("%s: starting" % mode, flush=True)
    from agent import cli
    sys.exit(cli.main(["run", "-c", os.environ["BAD_CONFIG"]]))
""")


def test_a_config_refused_at_start_is_in_the_journal_at_err_with_or_without_the_binding(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("device: {id: thunder10}\nmqtt: {host: gw, port: yes}\nsensors: []\n")
    entries = _by_mode(_journal_of(START_CHILD, BAD_CONFIG=str(bad)))
    for mode in MODES:
        refused = [e for e in entries[mode] if e["MESSAGE"].startswith("%s: mqtt.port" % bad)]
        assert refused, (mode, entries[mode])
        # `journalctl -u edison-agent -p err` shows it: PRIORITY 3, the prefix taken by journald.
        assert {e["PRIORITY"] for e in refused} == {"3"}, (mode, refused)


def test_a_start_up_error_is_plain_on_a_terminal_and_prefixed_for_the_journal(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("device: {id: thunder10}\nmqtt: {host: gw, port: yes}\nsensors: []\n")
    stderr_file = tmp_path / "stderr"
    run = [sys.executable, "-m", "agent", "run", "-c", str(bad)]
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(stderr_file, "w") as stderr:
        # systemd 231+ names the stream it connected stderr to; a file stands in for the socket.
        st = os.fstat(stderr.fileno())
        journal = dict(env, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
        assert subprocess.run(run, cwd=str(ROOT), env=journal, stderr=stderr).returncode == 2
    lines = stderr_file.read_text().splitlines()
    assert lines and all(line.startswith("<3>%s: " % bad) for line in lines), lines
    terminal = subprocess.run(run, cwd=str(ROOT), env=env, capture_output=True, text=True)
    assert terminal.returncode == 2
    assert terminal.stderr.splitlines() == [line[len("<3>"):] for line in lines]
