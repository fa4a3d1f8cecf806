"""Reads each sensor on its own schedule, on a monotonic clock, one failure never stalling the rest."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from agent.board import BoardError
from agent.config import SensorConfig
from agent.sensors import Sensor, SensorError, Value

log = logging.getLogger(__name__)

# (sensor name, value, unit, sampling wall-clock time)
Sink = Callable[[str, Value, Optional[str], float], None]


@dataclass
class _Slot:
    config: SensorConfig
    driver: Sensor
    ready: bool = False
    failing: Optional[str] = None
    samples: int = 0
    failures: int = 0


class Sampler:
    def __init__(self, sensors: List[Tuple[SensorConfig, Sensor]], sink: Sink,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._slots = [_Slot(cfg, driver) for cfg, driver in sensors]
        self._sink = sink
        self._monotonic = monotonic
        self._wall = wall

    def run(self, stop: threading.Event) -> None:
        start = self._monotonic()
        # (due time, slot index): a heap, so the next sensor due is always first.
        queue = [(start, i) for i in range(len(self._slots))]
        while queue and not stop.is_set():
            due_at, index = queue[0]
            delay = due_at - self._monotonic()
            if delay > 0:
                stop.wait(delay)
                continue
            heapq.heappop(queue)
            slot = self._slots[index]
            self.sample(slot)
            # The next time is a multiple of the interval from the first, so the schedule
            # does not drift; ticks missed while the board was busy are skipped, not bunched.
            interval = slot.config.interval
            now = self._monotonic()
            next_at = due_at + interval
            if next_at <= now:
                next_at += interval * ((now - next_at) // interval + 1)
            heapq.heappush(queue, (next_at, index))
        # With no sensors configured the agent still holds its session until told to stop.
        stop.wait()

    def sample(self, slot: _Slot) -> None:
        name = slot.config.name
        try:
            if not slot.ready:
                slot.driver.setup()
                slot.ready = True
            ts = self._wall()
            value = slot.driver.read()
        except (BoardError, SensorError) as exc:
            self._failed(slot, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a driver bug must not stop the other sensors
            log.debug("sensor %s raised", name, exc_info=True)
            self._failed(slot, "%s: %s" % (type(exc).__name__, exc))
            return
        if slot.failing is not None:
            log.info("sensor %s: reading again after: %s", name, slot.failing)
            slot.failing = None
        slot.samples += 1
        self._sink(name, value, slot.config.unit, ts)

    def _failed(self, slot: _Slot, message: str) -> None:
        slot.failures += 1
        if message != slot.failing:
            log.warning("sensor %s: %s (will retry every %g s)", slot.config.name, message, slot.config.interval)
            slot.failing = message
