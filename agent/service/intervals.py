"""Sampling intervals set by command (`set-interval`): the persisted ones are in the overlay file
too (`<state_dir>/overrides.yaml`); all of them outlive a reload, only the overlay's a restart."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Dict, Tuple

from agent.config import overlay
from agent.config.schema import AgentConfig
from agent.config.sensor_config import SensorConfig

log = logging.getLogger("agent.service.daemon")


class SensorIntervals:
    def __init__(self, state_dir: Path) -> None:
        self._path = overlay.path_in(state_dir)
        self._lock = threading.Lock()
        self._by_command: Dict[str, float] = {}
        # The sensors the sampler runs: the config's, with the intervals laid over them.
        self.current: Tuple[SensorConfig, ...] = ()

    def effective(self, config: AgentConfig) -> Tuple[SensorConfig, ...]:
        """The config's sensors with the overlay's intervals, then those set by command since the start."""
        sensors = overlay.apply(config.sensors, overlay.load(self._path), str(self._path))
        with self._lock:
            return overlay.apply(sensors, self._by_command, "a set-interval command")

    def set(self, sensor: str, seconds: float, persist: bool) -> None:
        """Raises OSError when the overlay cannot be written."""
        with self._lock:
            self._by_command[sensor] = seconds
            self.current = tuple(dataclasses.replace(s, interval=seconds) if s.name == sensor else s
                                 for s in self.current)
            if persist:
                saved = overlay.load(self._path)
                saved[sensor] = seconds
                overlay.save(self._path, saved)
        log.info("sensor %s: interval set to %g s by command%s", sensor, seconds,
                 ", saved in %s" % self._path if persist else " (until restart)")
