"""`<state_dir>/overrides.yaml`: sensor intervals made permanent by the set-interval command.

config.yaml belongs to its author and is never rewritten; what a command makes permanent lives
here and is laid over the config at every start and reload. Only intervals, for now.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Dict, Mapping, Tuple

import yaml

from agent.atomic_file import replace_file
from agent.config import identifiers
from agent.config.fields import Bounds, bounds_of
from agent.config.identifiers import brief
from agent.config.problems import FileProblem
from agent.config.reader import parse_yaml, read_text
from agent.config.sensor_config import SensorConfig

log = logging.getLogger(__name__)

FILE_NAME = "overrides.yaml"
HEADER = ("# Written by edison-agent (the set-interval command with persist: true); laid over\n"
          "# config.yaml at every start and reload. Delete a line (or the file) to go back to the config.\n")
# The bounds a sensor's interval has in config.yaml (agent/config/sensor_config.py declares them).
INTERVAL: Bounds = bounds_of(SensorConfig, "interval") or Bounds()


def path_in(state_dir: Path) -> Path:
    return Path(state_dir) / FILE_NAME


def load(path: Path) -> Dict[str, float]:
    """Sensor name -> interval; a missing file is empty, a broken one is logged and ignored."""
    try:
        # The same limits as config.yaml: a regular file, no alias bomb, no deep nesting.
        text = read_text(path, what="overlay")
    except FileProblem as exc:
        if not os.path.lexists(path):
            return {}
        log.error("%s: %s: the intervals in the config apply", path, exc)
        return {}
    try:
        tree = parse_yaml(text)
    except yaml.YAMLError as exc:
        log.error("%s: invalid YAML (%s): the intervals in the config apply; fix or delete the file",
                  path, str(exc).splitlines()[0])
        return {}
    sensors = tree.get("sensors") if isinstance(tree, dict) else None
    if tree is not None and not isinstance(sensors, dict):
        log.error("%s: expected 'sensors:' mapping names to {interval: seconds}; the file is ignored", path)
        return {}
    intervals: Dict[str, float] = {}
    for name, entry in (sensors or {}).items():
        value = entry.get("interval") if isinstance(entry, dict) else None
        if not isinstance(name, str) or identifiers.sensor_name_problem(name) is not None:
            log.error("%s: %s is not a sensor name; ignored", path, brief(name))
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or INTERVAL.problem(brief(value), value) is not None:
            log.error("%s: sensors.%s.interval: expected seconds, %s, got %s; ignored",
                      path, name, INTERVAL.text(), brief(value))
            continue
        intervals[str(name)] = float(value)
    return intervals


def save(path: Path, intervals: Mapping[str, float]) -> None:
    """Write atomically (a power cut leaves the old file or the new one); raises OSError."""
    body = yaml.safe_dump({"sensors": {name: {"interval": intervals[name]} for name in sorted(intervals)}},
                          default_flow_style=False)
    # The state directory's own mode, 0700, when it is made here; the file is the agent's alone: 0600.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_file(path, (HEADER + body).encode("utf-8"), 0o600, durable=True)


def apply(sensors: Tuple[SensorConfig, ...], intervals: Mapping[str, float],
          source: str = FILE_NAME) -> Tuple[SensorConfig, ...]:
    """The sensors with their intervals replaced; a name that is no sensor is logged and ignored."""
    known = {s.name for s in sensors}
    for name in sorted(set(intervals) - known):
        log.warning("%s names sensor %r, which is not in the config: ignored", source, name)
    result = []
    for sensor in sensors:
        interval = intervals.get(sensor.name)
        if interval is not None and interval != sensor.interval:
            log.info("sensor %s: interval %g s from %s (the config says %g s)", sensor.name, interval, source,
                     sensor.interval)
            sensor = dataclasses.replace(sensor, interval=interval)
        result.append(sensor)
    return tuple(result)
