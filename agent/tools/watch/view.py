"""The table `edison-agent watch` draws: plain text for --once, redrawn in place for the live view."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence

# Redrawn in place like top: home, each line then clear-to-end-of-line, then clear below. Never a
# full clear, which flickers. The alternate screen gives the terminal back as it was on exit.
HOME, CLEAR_EOL, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"
# Certificates closer than this to expiry make a board a problem (as `edison-agent status` says).
CERT_WARN_DAYS = 30

COLUMNS = ("BOARD", "STATE", "SINCE", "RATE/s", "LOST", "DUP", "SPOOL", "RECONN", "CERT", "LAST READING")


def ago(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return "%d%s" % (seconds // size, unit)
    return "%ds" % seconds


def _number(value: Any) -> str:
    return "-" if value is None else str(value)


def _last(reading: Optional[Dict[str, Any]], now: float) -> str:
    if not reading:
        return "-"
    value = reading.get("value")
    text = "%s=%s%s" % (reading.get("sensor"), "null" if value is None else "%g" % value if isinstance(
        value, (int, float)) else value, reading.get("unit") or "")
    if reading.get("quality"):
        text += " (%s)" % reading["quality"]
    ts = reading.get("ts")
    return text + (" %s ago" % ago(now - ts) if isinstance(ts, (int, float)) else "")


def cells(row: Dict[str, Any], now: float) -> List[str]:
    state = {True: "online", False: "OFFLINE", None: "?"}[row["online"]]
    since = ago(now - row["since"]) if row["since"] is not None else "-"
    if row["since"] is not None and not row["since_exact"]:
        since = "<" + since
    return [row["device"], state, since, "%.1f" % row["readings_per_s"], str(row["lost"]), str(row["duplicates"]),
            _number(row["spool_depth"]), _number(row["reconnects"]), _number(row["cert_days_left"]),
            _last(row["last_reading"], now)]


def is_problem(row: Dict[str, Any]) -> bool:
    days = row["cert_days_left"]
    return bool(row["online"] is False or row["lost"] or (days is not None and days < CERT_WARN_DAYS))


def summary(rows: Sequence[Dict[str, Any]], where: str, now: float) -> str:
    online = sum(1 for r in rows if r["online"])
    offline = sum(1 for r in rows if r["online"] is False)
    rate = sum(r["readings_per_s"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    duplicates = sum(r["duplicates"] for r in rows)
    return "edison-agent watch  %s  %d boards: %d online, %d offline  %.1f readings/s  lost %d  duplicated %d  %s" % (
        where, len(rows), online, offline, rate, lost, duplicates, time.strftime("%H:%M:%S", time.localtime(now)))


def table(rows: Sequence[Dict[str, Any]], now: float) -> List[str]:
    grid = [list(COLUMNS)] + [cells(r, now) for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(COLUMNS) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1] for line in grid]


def screen(rows: Sequence[Dict[str, Any]], where: str, status: str, now: float, width: int,
           height: int) -> List[str]:
    """The live view: the summary, then as many boards as fit, those with a problem first."""
    ordered = sorted(rows, key=lambda r: (not is_problem(r), r["device"]))
    room = max(1, height - 4)
    shown = ordered if len(ordered) <= room else ordered[:room - 1]
    lines = [summary(rows, where, now), status] + table(shown, now)
    if len(shown) < len(ordered):
        lines.append("... %d more boards (problems first; --once for all, --json for machines)"
                     % (len(ordered) - len(shown)))
    return [line[:width] for line in lines]


def frame(lines: Sequence[str]) -> str:
    """One redraw: over the previous frame, line by line, without clearing the screen first."""
    return HOME + "".join(line + CLEAR_EOL + "\r\n" for line in lines) + CLEAR_BELOW
