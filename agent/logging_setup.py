"""Where log lines go: the journal (with fields) under systemd, else stderr."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

FORMAT_TERMINAL = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# journald stamps each line itself; repeating the time would only add noise.
FORMAT_JOURNAL_STREAM = "<%(levelno_syslog)d>%(name)s: %(message)s"

_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _SyslogPrefix(logging.Filter):
    """journald reads a `<N>` prefix on stderr lines as the priority."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno_syslog = _SYSLOG.get(record.levelno, 6)
        return True


def configure(level: str) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(level.upper())
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM"):
        handler = _journal_handler() or _stream_handler(FORMAT_JOURNAL_STREAM, syslog_prefix=True)
    else:
        handler = _stream_handler(FORMAT_TERMINAL, syslog_prefix=False)
    root.addHandler(handler)
    # paho logs through its own on_log hook into ours; its logger stays quiet.
    logging.getLogger("paho").setLevel(logging.WARNING)


def _stream_handler(fmt: str, syslog_prefix: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    if syslog_prefix:
        handler.addFilter(_SyslogPrefix())
    return handler


def _journal_handler() -> Optional[logging.Handler]:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="edison-agent")
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler
