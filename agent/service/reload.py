"""A reload that is over when it returns: `edison-agent reload --pid PID`, the unit's ExecReload=.

With `ExecReload=/bin/kill -HUP $MAINPID`, systemd finishes the reload job as soon as kill exits,
which may be before the agent has even seen the signal (systemd.service(5) warns about exactly
this), so `systemctl reload edison-agent && check` races. Type=notify-reload would fix it, but only
from systemd 253; the board has 216. So ExecReload runs this command instead: it sends SIGHUP and
returns only when the agent says it has re-read its config, with exit status 0 if the new config
was applied and 2 if it was refused (systemd then fails the reload job and the service stays
active with the config it had).

The agent's answer is a small file, reload.json, beside the health file (/run/edison-agent, or
$RUNTIME_DIRECTORY, which ExecReload= gets as ExecStart= does): the agent's PID, when the reload
began on CLOCK_MONOTONIC (one clock for every process on the machine, unmoved by time syncs), and
the problems that refused it. A reload that began after the signal was sent has read the config as
it was then, or newer: that is the one to wait for, however many others run meanwhile (a `reload`
command over MQTT, a second SIGHUP).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from agent.atomic_file import replace_file

log = logging.getLogger(__name__)

ACK_NAME = "reload.json"
DEFAULT_TIMEOUT = 60.0
# How often the waiter looks: it lives for one reload, and 50 ms is nothing beside a config load.
POLL_INTERVAL = 0.05
EXIT_APPLIED, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def default_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the agent's health file is by default, and so its reload.json."""
    from agent.config.schema import default_health_file

    return default_health_file(environ).parent


class Acknowledgement:
    """The agent's side: one file, replaced at the end of every reload."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / ACK_NAME

    def write(self, started: float, problems: Sequence[str]) -> None:
        """`started`: time.monotonic() when the reload began, before the config was read."""
        document = {"pid": os.getpid(), "started": started, "accepted": not problems, "problems": list(problems)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replace_file(self.path, (json.dumps(document) + "\n").encode("utf-8"), 0o644)
        except OSError as exc:
            # The reload itself is done; only a waiting `edison-agent reload` will time out.
            log.warning("cannot write %s: %s ('systemctl reload' will time out)", self.path, exc.strerror or exc)


def wait_for_reload(pid: int, directory: Path, timeout: float) -> int:
    """SIGHUP to `pid`, then wait for its acknowledgement; prints why on stderr unless it applied."""
    path = Path(directory) / ACK_NAME
    sent = time.monotonic()
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        return _fail("cannot signal PID %d: %s" % (pid, exc.strerror or exc))
    deadline = sent + timeout
    while True:
        ack = _read(path)
        if ack is not None and ack["pid"] == pid and ack["started"] >= sent:
            problems = [str(p) for p in ack["problems"]]
            if ack["accepted"] and not problems:
                return EXIT_APPLIED
            for problem in problems or ["(no reason given)"]:
                _error("reload refused, the previous config stays: %s" % problem)
            return EXIT_REFUSED
        if not _alive(pid):
            return _fail("PID %d exited before it reloaded" % pid)
        if time.monotonic() >= deadline:
            return _fail("PID %d did not acknowledge the reload in %s within %g s" % (pid, path, timeout))
        time.sleep(POLL_INTERVAL)


def _read(path: Path) -> Optional[Dict[str, Any]]:
    """The acknowledgement, or None while there is none (or a file that is not one)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(document, dict) and isinstance(document.get("pid"), int)
            and isinstance(document.get("started"), (int, float)) and isinstance(document.get("problems"), list)):
        return None
    return document


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purpose: it will never answer.
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[:1] != ["Z"]
    except OSError:
        return True


def _fail(message: str) -> int:
    _error(message)
    return EXIT_FAILED


def _error(message: str) -> None:
    from agent.service.logging_setup import print_error

    print_error("edison-agent reload: %s" % message)


def add_reload_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reload = commands.add_parser(
        "reload", help="send SIGHUP to the agent and wait until it has re-read its config (the unit's ExecReload=)",
        description="Exit 0 when the new config is applied, 2 when the agent refused it (it keeps the previous "
                    "one), 1 when it did not answer in time or is not running.")
    reload.add_argument("--pid", type=int, required=True, help="the agent's PID (systemd: $MAINPID)")
    reload.add_argument("--dir", type=Path, default=None,
                        help="the directory of the agent's health file, where it acknowledges reloads "
                             "(default: $RUNTIME_DIRECTORY or /run/edison-agent)")
    reload.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds; default: %(default)g")
    reload.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return wait_for_reload(args.pid, args.dir or default_dir(), args.timeout)

