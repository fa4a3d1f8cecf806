"""The Wi-Fi link the board reports on, from the kernel's /proc/net/wireless (any Linux)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from agent.hardware.sensors.base import Sensor, SensorError, Value

# A module-level name so tests can point it at a fixture file.
PROC_NET_WIRELESS = Path("/proc/net/wireless")

METRICS: Dict[str, Optional[str]] = {
    # The 'level' column.
    "signal_dbm": "dBm",
    # The 'link' column: the driver's own scale (cfg80211 drivers 0-70, Broadcom's wext 0-5).
    "link_quality": None,
}

# Below this no 802.11 receiver decodes anything; it is also cfg80211's floor for link quality
# (net/wireless/wext-compat.c, cfg80211_wireless_stats: sig < -110 is clamped to -110).
WEAKEST_DBM = -110


@dataclass(frozen=True)
class WifiOptions:
    interface: str = "wlan0"
    metric: str = "signal_dbm"


def _parse(text: str) -> Dict[str, List[str]]:
    """Each interface's columns after the name: status, link, level, noise, discards..., beacon.

    The kernel prints two header lines, then one "%6s: %04x  %3d%c  %3d%c  %3d%c ..." line per
    wireless interface (net/wireless/wext-proc.c, wireless_seq_printf_stats); the %c after each
    quality column is '.' when the driver updated that value since the last read.
    """
    rows: Dict[str, List[str]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if sep and name.strip():
            rows[name.strip()] = rest.split()
    return rows


def _number(token: str) -> int:
    return int(token.rstrip("."))


def _dbm(level: int, interface: str) -> int:
    """The 'level' column in dBm.

    wext's struct iw_quality keeps the level in a __u8. When the driver flags it as dBm
    (IW_QUAL_DBM), today's kernels print level - 0x100, a negative dBm value. Older kernels
    printed the raw byte, and some drivers put a dBm byte there without the flag; for those,
    wireless-tools' iwlib (iw_print_stats) reads a byte >= 64 as byte - 256: "a range for dBm
    [-192; 63]".
    """
    if level == 0:
        # What the kernel prints for an interface it has no statistics for (not associated).
        raise SensorError("%s has no signal level (not associated with an access point?)" % interface)
    if level == -256:
        # A dBm driver's level byte of 0: Broadcom's driver reports so with no RSSI.
        raise SensorError("%s reports no signal level (-256: not associated with an access point?)" % interface)
    if 0 < level < 64:
        raise SensorError("%s's level %d is not in dBm (its driver reports a relative level): "
                          "use metric: link_quality" % (interface, level))
    dbm = level - 256 if level >= 64 else level
    if not WEAKEST_DBM <= dbm < 0:
        raise SensorError("%s's level %d (%d dBm) is not a received signal: its driver reports a "
                          "relative level, not dBm; use metric: link_quality" % (interface, level, dbm))
    return dbm


def first_interface() -> str:
    """The first wireless interface the kernel lists, for `system`'s wifi_signal."""
    try:
        rows = _parse(PROC_NET_WIRELESS.read_text())
    except OSError as exc:
        raise SensorError("no wireless interfaces: cannot read %s (%s)" % (PROC_NET_WIRELESS, exc.strerror)) from None
    if not rows:
        raise SensorError("no wireless interface in %s" % PROC_NET_WIRELESS)
    return next(iter(rows))


class WifiSensor(Sensor):
    blocking = False
    uses_board = False
    Options = WifiOptions
    options: WifiOptions

    @classmethod
    def check_options(cls, options: WifiOptions) -> List[Tuple[str, str]]:
        problems = []
        if not options.interface or any(c.isspace() or c == ":" for c in options.interface):
            problems.append(("interface", "%r is not an interface name (like wlan0)" % options.interface))
        if options.metric not in METRICS:
            problems.append(("metric", "%r is not one of: %s" % (options.metric, ", ".join(METRICS))))
        return problems

    @classmethod
    def default_unit(cls, options: WifiOptions) -> Optional[str]:
        return METRICS.get(options.metric)

    def read(self) -> Value:
        interface = self.options.interface
        try:
            text = PROC_NET_WIRELESS.read_text()
        except FileNotFoundError:
            raise SensorError("%s: %s does not exist (a kernel without wireless extensions, or not Linux); "
                              "no wireless interfaces to read" % (interface, PROC_NET_WIRELESS)) from None
        except OSError as exc:
            raise SensorError("%s: cannot read %s: %s" % (interface, PROC_NET_WIRELESS, exc.strerror)) from None
        rows = _parse(text)
        columns = rows.get(interface)
        if columns is None:
            raise SensorError("%s is not a wireless interface in %s (present: %s)"
                              % (interface, PROC_NET_WIRELESS, ", ".join(sorted(rows)) or "none"))
        try:
            link, level = _number(columns[1]), _number(columns[2])
        except (IndexError, ValueError):
            raise SensorError("%s: cannot read the line %r in %s" % (interface, " ".join(columns),
                                                                     PROC_NET_WIRELESS)) from None
        if self.options.metric == "link_quality":
            return link
        return _dbm(level, interface)
