"""Facts about the board itself, from /proc and /sys (any Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from agent.hardware.sensors.base import Sensor, SensorError, Value

THERMAL = Path("/sys/class/thermal")


@dataclass(frozen=True)
class SystemOptions:
    metric: str
    # The filesystem disk_free looks at.
    path: str = "/"


def _cpu_temperature(options: SystemOptions) -> Value:
    # The Edison's SoC zone is the first; x86 laptops and VMs may have none.
    for zone in sorted(THERMAL.glob("thermal_zone*/temp")):
        try:
            return int(zone.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
    raise SensorError("no readable thermal zone under %s" % THERMAL)


def _load1(options: SystemOptions) -> Value:
    return os.getloadavg()[0]


def _mem_available(options: SystemOptions) -> Value:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    raise SensorError("/proc/meminfo has no MemAvailable line")


def _disk_free(options: SystemOptions) -> Value:
    try:
        st = os.statvfs(options.path)
    except OSError as exc:
        raise SensorError("%s: %s" % (options.path, exc.strerror)) from None
    return st.f_bavail * st.f_frsize / (1024.0 * 1024.0)


def _wifi_signal(options: SystemOptions) -> Value:
    # The wifi driver knows the kernel's formats; this is its reading for the first interface.
    from agent.hardware.sensors.wifi import WifiOptions, WifiSensor, first_interface

    return WifiSensor("wifi", WifiOptions(interface=first_interface()), None).read()  # type: ignore[arg-type]


def _uptime(options: SystemOptions) -> Value:
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0])


METRICS: Dict[str, Tuple[Callable[[SystemOptions], Value], str]] = {
    "cpu_temperature": (_cpu_temperature, "degC"),
    "load1": (_load1, "load"),
    "mem_available": (_mem_available, "MiB"),
    "disk_free": (_disk_free, "MiB"),
    "uptime": (_uptime, "s"),
    "wifi_signal": (_wifi_signal, "dBm"),
}


class SystemSensor(Sensor):
    blocking = False
    uses_board = False
    Options = SystemOptions

    @classmethod
    def check_options(cls, options: SystemOptions) -> List[Tuple[str, str]]:
        if options.metric not in METRICS:
            return [("metric", "%r is not one of: %s" % (options.metric, ", ".join(sorted(METRICS))))]
        return []

    @classmethod
    def default_unit(cls, options: SystemOptions) -> Optional[str]:
        return METRICS[options.metric][1]

    def read(self) -> Value:
        try:
            return METRICS[self.options.metric][0](self.options)
        except OSError as exc:
            raise SensorError("%s: %s" % (self.options.metric, exc)) from None
