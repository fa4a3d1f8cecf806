"""Where log lines go: the journal (with fields) under systemd, else stderr.

Under systemd, with systemd-python installed, every record goes to the journal through the
binding's `JournalHandler`, with SYSLOG_IDENTIFIER=edison-agent, PRIORITY mapped from the level
and the record's structured fields. Modules attach fields with UPPER_CASE names:

    log.warning("read failed: %s", exc, extra={"SENSOR": name})

journald keeps only names made of A-Z, 0-9 and '_' (and drops those starting with '_', which
are its own); JOURNAL_FIELDS lists the ones the agent uses, for `journalctl SENSOR=temperature`.

What the CLI prints for a person (print_error, print_warning: a bad config at start) goes to
stderr in both cases, with the same `<N>` prefix when stderr is the journal, plain otherwise.

Under systemd without the binding, lines go to stderr with a `<N>` syslog priority prefix,
which journald turns into PRIORITY (the structured fields are lost). Elsewhere (a terminal,
a test), plain stderr lines with a timestamp.

"Under systemd" means stderr is journald's stream socket. systemd 231+ says so in
$JOURNAL_STREAM ("device:inode" of that socket, to be compared with stderr's, systemd.exec(5));
older systemd (the Edison's 216) sets no such variable, so then the peer of stderr is asked
whether it is journald's /run/systemd/journal/stdout.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import sys
from typing import Any, Dict, Mapping, Optional

SYSLOG_IDENTIFIER = "edison-agent"
# The structured fields modules attach with `extra=` (docs/operations.md shows how to query them).
JOURNAL_FIELDS = ("SENSOR", "BROKER", "MQTT_RC", "TLS_ERROR")

JOURNAL_SOCKET = "/run/systemd/journal/socket"  # the native protocol (systemd-python sends here)
JOURNAL_STDOUT = "/run/systemd/journal/stdout"  # the stream services' stdout/stderr are connected to

FORMAT_TERMINAL = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# journald stamps each line itself; repeating the time would only add noise.
FORMAT_JOURNAL_STREAM = "<%(levelno_syslog)d>%(name)s: %(message)s"

# Python level -> syslog priority (what JournalHandler.map_priority does, for the stderr path too).
_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

# journald's rule for a field a client may set (journal_field_valid()): upper case, digits and
# '_', not starting with a digit or '_', at most 64 characters.
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
# Attributes every LogRecord has; whatever else a record carries came in through `extra=`.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "levelno_syslog", "taskName"}
# Set by the handler itself: a record may not override them.
_RESERVED = frozenset({"MESSAGE", "PRIORITY", "LOGGER", "THREAD_NAME", "CODE_FILE", "CODE_LINE", "CODE_FUNC",
                       "SYSLOG_IDENTIFIER"})


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a Python level, rounding between levels the way JournalHandler does."""
    for level in sorted(_SYSLOG):
        if levelno <= level:
            return _SYSLOG[level]
    return 1  # above CRITICAL: ALERT


def journal_fields(record: logging.LogRecord) -> Dict[str, Any]:
    """The structured fields a record carries, under the names journald will keep.

    Only what came in through `extra=` counts; a lower-case name is upper-cased rather than
    silently dropped by journald, and a name journald would reject anyway is left out.
    """
    fields: Dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _RECORD_ATTRIBUTES or value is None:
            continue
        name = key.upper()
        if _FIELD_NAME.fullmatch(name) and name not in _RESERVED:
            fields[name] = value
    return fields



def stderr_is_journal(environ: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """True when `fd` is the journal stream systemd connected the service's stderr to."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    stream = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if dev.isdigit() and ino.isdigit() and (int(dev), int(ino)) == (st.st_dev, st.st_ino):
        return True
    if not stat.S_ISSOCK(st.st_mode):
        return False
    # systemd < 231 sets no $JOURNAL_STREAM: ask the socket whom it is connected to.
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            return bool(sock.family == socket.AF_UNIX and sock.getpeername() == JOURNAL_STDOUT)
    except OSError:
        return False


def print_error(text: str) -> None:
    """A line for a person: plain on a terminal, at PRIORITY=err (3) when stderr is the journal."""
    _print(3, text)


def print_warning(text: str) -> None:
    """As print_error, at PRIORITY=warning (4)."""
    _print(4, text)


def _print(priority: int, text: str) -> None:
    # Start-up failures (a bad config, a key that cannot be read) are printed, not logged: on a
    # terminal they are one line each with no timestamp. Without the prefix journald would file
    # them at info, and `journalctl -p err` would show only systemd's "Failed to start".
    prefix = "<%d>" % priority if stderr_is_journal() else ""
    sys.stderr.write("".join(prefix + line + "\n" for line in text.splitlines() or [""]))
    sys.stderr.flush()


def destination(environ: Mapping[str, str] = os.environ) -> str:
    """'journal' (native, with fields), 'journal-stream' (stderr with `<N>`) or 'terminal'."""
    if not stderr_is_journal(environ):
        return "terminal"
    if _journal_handler_class() is not None and os.path.exists(JOURNAL_SOCKET):
        return "journal"
    return "journal-stream"


def configure(level: str) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(level.upper())
    where = destination()
    handler: logging.Handler
    if where == "journal":
        handler = journal_handler()
    elif where == "journal-stream":
        handler = stream_handler(FORMAT_JOURNAL_STREAM, syslog_prefix=True)
    else:
        handler = stream_handler(FORMAT_TERMINAL, syslog_prefix=False)
    root.addHandler(handler)
    # paho logs through its own on_log hook into ours; its logger stays quiet.
    logging.getLogger("paho").setLevel(logging.WARNING)


class _SyslogPrefix(logging.Filter):
    """journald reads a `<N>` prefix on stderr lines as the priority."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno_syslog = syslog_priority(record.levelno)
        return True


class _EveryLinePrefixed(logging.Formatter):
    """journald makes an entry of each stderr line: a traceback's lines need the `<N>` too."""

    def format(self, record: logging.LogRecord) -> str:
        first, *rest = super().format(record).split("\n")
        prefix = "<%d>" % syslog_priority(record.levelno)
        return "\n".join([first] + [prefix + line for line in rest])


def stream_handler(fmt: str, syslog_prefix: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    if syslog_prefix:
        handler.setFormatter(_EveryLinePrefixed(fmt))
        handler.addFilter(_SyslogPrefix())
    else:
        handler.setFormatter(logging.Formatter(fmt))
    return handler


def journal_handler(sender_function: Optional[Any] = None) -> logging.Handler:
    """systemd-python's JournalHandler, sending only the fields journald keeps.

    `sender_function` is the binding's own hook (defaults to `systemd.journal.send`); tests pass
    a function that records the call. Raises ImportError without systemd-python.
    """
    cls = _journal_handler_class()
    if cls is None:
        raise ImportError("systemd-python is not installed (pip install 'edison-agent[systemd]')")
    kwargs: Dict[str, Any] = {"SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER}
    if sender_function is not None:
        kwargs["sender_function"] = sender_function
    handler: logging.Handler = cls(**kwargs)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


_handler_class: Optional[type] = None


def _journal_handler_class() -> Optional[type]:
    global _handler_class
    if _handler_class is not None:
        return _handler_class
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None

    class AgentJournalHandler(JournalHandler):  # type: ignore[misc]
        """The binding's handler sends every attribute of the record (msg, args, levelname, ...),
        which journald then drops for their lower-case names, and passes `extra=` fields only when
        they are already upper case. This one sends the record's own fields, upper-cased."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                message = self.format(record)
                fields = dict(self._extra)
                fields.update(journal_fields(record))
                self.send(message,
                          PRIORITY=str(syslog_priority(record.levelno)),
                          LOGGER=record.name,
                          THREAD_NAME=record.threadName,
                          CODE_FILE=record.pathname,
                          CODE_LINE=record.lineno,
                          CODE_FUNC=record.funcName,
                          **fields)
            except Exception:  # noqa: BLE001 - logging must never raise into the caller
                self.handleError(record)

    _handler_class = AgentJournalHandler
    return _handler_class
