"""`edison-agent status`: the running agent's health document, for a person or a script.

It reads the file the daemon rewrites every `health.interval` (never the broker): it works on
the board without certificates or network, and as any user (the file is 0644).
Exit 0 when the document is fresh and the agent running; 1 when the file is missing,
unreadable, stale (older than three intervals) or written by an agent that stopped.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path
from typing import IO, List, Optional, Tuple

from agent.config import schema as config
from agent.service import health_report
from agent.service.health_report import CONNECTED, STOPPED, HealthReport

EXIT_OK, EXIT_NOT_RUNNING, EXIT_CONFIG = 0, 1, 2
# Certificates closer than this to expiry are shown in yellow, past it in red.
CERT_WARN_DAYS, CERT_ALARM_DAYS = 30, 7

GREEN, YELLOW, RED, BOLD, RESET = "\033[32m", "\033[33m", "\033[31m", "\033[1m", "\033[0m"


def add_status_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    status = subparsers.add_parser("status", help="show the running agent's health (from its health file)")
    status.add_argument("-c", "--config", type=Path, help="take the file's path from this config's health.file")
    status.add_argument("--file", type=Path, help="the health file (default: %s)" % config.default_health_file())
    status.add_argument("--json", action="store_true", help="print the health document as JSON")
    status.set_defaults(func=run_status)


def run_status(args: argparse.Namespace, out: Optional[IO[str]] = None) -> int:
    out = out or sys.stdout
    path = _health_file(args)
    if path is None:
        return EXIT_CONFIG
    try:
        text = path.read_text(encoding="utf-8")
        report = HealthReport.from_json(text)
    except FileNotFoundError:
        _err("no health file at %s: is the agent running? (systemctl status edison-agent)" % path)
        return EXIT_NOT_RUNNING
    except OSError as exc:
        _err("cannot read %s: %s (it is 0644 in a 0755 directory when the agent writes it; run as root "
             "or check its mode)" % (path, exc.strerror or exc))
        return EXIT_NOT_RUNNING
    except (ValueError, UnicodeDecodeError) as exc:
        _err("%s is not a health document the agent wrote: %s" % (path, exc))
        return EXIT_NOT_RUNNING
    now = time.time()
    stale = health_report.is_stale(report, now)
    if args.json:
        out.write(text if text.endswith("\n") else text + "\n")
        if stale:
            _err("%s is stale: last written %s ago (every %s expected)"
                 % (path, duration(now - report.time), duration(report.interval)))
    else:
        out.write(render(report, now, color=_color(out)) + "\n")
    return EXIT_NOT_RUNNING if stale or report.connection.state == STOPPED else EXIT_OK


def _health_file(args: argparse.Namespace) -> Optional[Path]:
    if args.file is not None:
        return Path(args.file)
    if args.config is None:
        return config.default_health_file()
    try:
        return config.load(args.config).health.file
    except config.ConfigError as exc:
        for problem in exc.problems:
            _err(problem)
        return None


def _err(line: str) -> None:
    print("edison-agent status: %s" % line, file=sys.stderr)


def _color(out: IO[str]) -> bool:
    # https://no-color.org: present and not empty disables colour.
    return out.isatty() and not os.environ.get("NO_COLOR")


def render(report: HealthReport, now: float, color: bool = False) -> str:
    """A short aligned table for a person."""

    def paint(text: str, code: Optional[str]) -> str:
        return "%s%s%s" % (code, text, RESET) if color and code else text

    c, r, s = report.connection, report.readings, report.spool
    rows: List[Tuple[str, str]] = []
    since = " since %s (%s)" % (clock(c.since, now), duration(now - c.since)) if c.since is not None else ""
    if health_report.is_stale(report, now):
        state = paint("STALE: last written %s ago, expected every %s: the agent is stuck or gone "
                      "(systemctl status edison-agent)" % (duration(now - report.time), duration(report.interval)),
                      RED)
    elif c.state == CONNECTED:
        state = paint(c.state, GREEN) + since
    else:
        state = paint(c.state, RED) + since + (": %s" % c.problem if c.problem else "")
    rows.append(("state", state))
    rows.append(("updated", "%s ago (every %s), up %s" % (duration(now - report.time), duration(report.interval),
                                                          duration(report.uptime))))
    rows.append(("readings", "%d sampled, %d delivered" % (r.sampled, r.delivered)))
    backlog = "%d in the spool (%d in flight), %s" % (s.depth, s.in_flight, size(s.bytes))
    if not s.durable:
        backlog += paint(", in memory only", YELLOW)
    rows.append(("backlog", backlog))
    dropped = "%d" % r.dropped
    if r.dropped:
        dropped = paint(dropped, YELLOW) + " (full %d, age %d, corrupt %d)" % (
            r.dropped_full, r.dropped_age, r.dropped_corrupt)
    rows.append(("dropped", dropped))
    rows.append(("reconnects", "%d" % c.reconnects))
    if c.tls_version:
        how = {True: ", resumed session", False: ", full handshake", None: ""}[c.resumed]
        rows.append(("TLS", "%s %s%s" % (c.tls_version, c.cipher, how)))
    elif c.state == CONNECTED:
        rows.append(("TLS", paint("none: plain MQTT", RED)))
    cert = report.certificate
    if cert is not None:
        code = RED if cert.days_left < CERT_ALARM_DAYS else YELLOW if cert.days_left < CERT_WARN_DAYS else None
        left = ("%d days left" % cert.days_left if cert.days_left >= 0 else "EXPIRED")
        until = "%s %s UTC" % (cert.not_after[:10], cert.not_after[11:16])
        rows.append(("certificate", "%s (until %s)" % (paint(left, code), until)))
    if report.last_error is not None:
        e = report.last_error
        rows.append(("last error", "%s (%s ago) %s" % (clock(e.time, now), duration(now - e.time),
                                                       paint(e.message, YELLOW))))
    b = report.board
    facts = [text for value, text in (
        (b.cpu_temperature, "CPU %.1f degC" % (b.cpu_temperature or 0)),
        (b.mem_available_mib, "%.0f MiB free" % (b.mem_available_mib or 0)),
        (b.load1, "load %.2f" % (b.load1 or 0))) if value is not None]
    if facts:
        rows.append(("board", ", ".join(facts)))
    title = "edison-agent %s on %s, config %s" % (report.version, report.device, report.config_hash)
    width = max(len(name) for name, _ in rows)
    return "\n".join([paint(title, BOLD)] + ["  %-*s  %s" % (width, name, value) for name, value in rows])


def clock(ts: float, now: float) -> str:
    """Local time; with the date when it is not today's."""
    moment, today = datetime.datetime.fromtimestamp(ts), datetime.datetime.fromtimestamp(now)
    return moment.strftime("%H:%M:%S" if moment.date() == today.date() else "%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return "%d s" % seconds
    if seconds < 3600:
        return "%d min" % (seconds // 60)
    if seconds < 86400:
        return "%d h %d min" % (seconds // 3600, seconds % 3600 // 60)
    return "%d d %d h" % (seconds // 86400, seconds % 86400 // 3600)


def size(count: int) -> str:
    if count < 1024:
        return "%d bytes" % count
    if count < 1024 * 1024:
        return "%.1f KiB" % (count / 1024)
    return "%.1f MiB" % (count / 1024 / 1024)
