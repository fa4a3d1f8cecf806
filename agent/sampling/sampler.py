"""When each sensor is read, and what happens when one fails or hangs.

The schedule runs on the main thread on a monotonic clock; each sensor's reads run on a
worker thread of its own, so a read that blocks (a stuck I2C bus, a slow conversion)
delays nobody else. A sensor has at most one read in flight: a read still running at its
next tick makes that tick a skip, and past `timeout` a failure.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import queue
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

from agent.config.sensor_config import ChannelConfig, SensorConfig
from agent.hardware.board import BoardError
from agent.hardware.sensors import Sensor, SensorError, Value
from agent.sampling.processing import Pipeline
from agent.sampling.reading import ERROR, Sample
from agent.waker import Waker

log = logging.getLogger(__name__)

Sink = Callable[[Sample], None]
# A failing sensor is retried at its interval, then less and less often, but at least this often.
MAX_RETRY_DELAY = 60.0


@dataclass
class _Slot:
    config: SensorConfig
    driver: Sensor
    pipelines: Dict[str, Pipeline]
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: bool = False
    busy_since: Optional[float] = None
    hung: bool = False
    failures: int = 0
    failing: Optional[str] = None
    error_published: bool = False
    retry_at: float = 0.0
    worker: Optional["_Worker"] = None
    # Log lines about this sensor carry SENSOR= in the journal: `journalctl SENSOR=door`.
    log: "logging.LoggerAdapter[logging.Logger]" = field(init=False)

    def __post_init__(self) -> None:
        self.log = logging.LoggerAdapter(log, {"SENSOR": self.config.name})


class _Worker(threading.Thread):
    """One sensor's reads. A daemon thread, so a read hung forever cannot keep the agent from exiting."""

    def __init__(self, name: str) -> None:
        super().__init__(name="sensor-%s" % name, daemon=True)
        self._jobs: "queue.SimpleQueue[Optional[Callable[[], None]]]" = queue.SimpleQueue()

    def submit(self, job: Optional[Callable[[], None]]) -> None:
        """A job to run; None ends the thread once the job under way (if any) returns."""
        self._jobs.put(job)

    def run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()


class UnknownSensor(KeyError):
    """A request named no configured sensor."""


class Alarm:
    """The schedule's stop flag, which can also be rung: ringing wakes the schedule early (to take
    a request from another thread) without stopping it. threading.Event's interface otherwise.

    The schedule sleeps on the agent's one wake-up mechanism (agent/waker.py) until its deadline."""

    def __init__(self) -> None:
        # Re-entrant: set() runs in a signal handler, on the very thread that may be holding it.
        self._lock = threading.RLock()
        self._set = False
        self._waker = Waker()

    def is_set(self) -> bool:
        # One read of one attribute, as threading.Event.is_set does: no lock (the schedule asks
        # before every reading); set() and clear() take it.
        return self._set

    def set(self) -> None:
        with self._lock:
            self._set = True
        self._waker.ring()

    def clear(self) -> None:
        with self._lock:
            self._set = False

    def ring(self) -> None:
        self._waker.ring()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Until `timeout` passes, set() or ring() (a ring before the wait is not lost); whether set."""
        if not self.is_set():
            self._waker.set(None if timeout is None else time.monotonic() + max(timeout, 0.0))
            self._waker.wait()
        return self.is_set()


@dataclass(frozen=True)
class _Request:
    # A read of one slot (all when index is None), or, with `interval`, a new interval for one.
    index: Optional[int]
    interval: Optional[float] = None


class Sampler:
    def __init__(self, sensors: List[Tuple[SensorConfig, Sensor]], sink: Sink,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self._slots = [_Slot(cfg, driver, {c.key: Pipeline(c.processing) for c in cfg.channels})
                       for cfg, driver in sensors]
        self._sink = sink
        self._monotonic = monotonic
        self._wall = wall
        # Requests from other threads (commands); only the schedule's thread touches its heap.
        self._requests: "queue.SimpleQueue[_Request]" = queue.SimpleQueue()
        # The running schedule's alarm, which a request rings: set by run(), read by other threads.
        self._alarm_lock = threading.Lock()
        self._alarm: Optional[Alarm] = None

    def request_read(self, name: Optional[str]) -> List[str]:
        """Read sensor `name` (all when None) as soon as possible, outside its schedule; thread-safe.
        Returns the names to be read; raises UnknownSensor."""
        index = None if name is None else self._index(name)
        self._request(_Request(index))
        return [slot.config.name for i, slot in enumerate(self._slots) if index is None or i == index]

    def set_interval(self, name: str, seconds: float) -> None:
        """Sample `name` every `seconds` from now on (until the sampler is rebuilt); thread-safe."""
        self._request(_Request(self._index(name), float(seconds)))

    def _index(self, name: str) -> int:
        for i, slot in enumerate(self._slots):
            if slot.config.name == name:
                return i
        raise UnknownSensor(name)

    def _request(self, request: _Request) -> None:
        self._requests.put(request)
        with self._alarm_lock:
            alarm = self._alarm
        if alarm is not None:
            alarm.ring()

    def _take_requests(self, heap: List[Tuple[float, int]]) -> None:
        while not self._requests.empty():
            request = self._requests.get_nowait()
            index, seconds = request.index, request.interval
            if seconds is None:
                # A read outside the schedule; like any tick, a skip if a read is under way.
                for i, slot in enumerate(self._slots):
                    if index is None or i == index:
                        self._tick(slot)
            elif index is not None:
                slot = self._slots[index]
                slot.config = dataclasses.replace(slot.config, interval=seconds)
                # The new pace starts now if that is sooner than the reading already due.
                due = self._monotonic() + seconds
                heap[:] = [(min(at, due), i) if i == index else (at, i) for at, i in heap]
                heapq.heapify(heap)

    def run(self, stop: Union[threading.Event, Alarm], on_tick: Optional[Callable[[], None]] = None,
            tick_interval: Optional[float] = None, before_sleep: Callable[[], None] = lambda: None) -> None:
        """Sample until `stop`; `on_tick` runs on this thread at least every `tick_interval` seconds,
        `before_sleep` each time it is about to wait.

        With an Alarm as `stop`, requests from other threads wake the schedule at once."""
        with self._alarm_lock:
            self._alarm = stop if isinstance(stop, Alarm) else None
        start = self._monotonic()
        ticking = on_tick is not None and bool(tick_interval)
        next_tick = start if ticking else float("inf")
        # (due time, slot index): a heap, so the next sensor due is always first.
        heap = [(start + slot.config.phase, i) for i, slot in enumerate(self._slots)]
        heapq.heapify(heap)
        while not stop.is_set():
            self._take_requests(heap)
            now = self._monotonic()
            # A tick half an interval early rides on a sensor's wake-up instead of costing its own.
            sensor_due = bool(heap) and heap[0][0] <= now
            if ticking and (now >= next_tick or (sensor_due and now >= next_tick - tick_interval / 2)):  # type: ignore
                on_tick()  # type: ignore[misc]
                next_tick = now + tick_interval  # type: ignore[operator]
            wake = min(heap[0][0] if heap else float("inf"), next_tick)
            if wake == float("inf"):
                # No sensors and no ticks: the agent holds its session until told to stop.
                before_sleep()
                stop.wait()
                break
            delay = wake - now
            if delay > 0:
                before_sleep()
                stop.wait(delay)
                continue
            if not heap or heap[0][0] > now:
                continue
            due_at, index = heap[0]
            heapq.heappop(heap)
            slot = self._slots[index]
            self._tick(slot)
            # The next time is a multiple of the interval from the first, so the schedule
            # does not drift; ticks missed while the board was busy are skipped, not bunched.
            interval = slot.config.interval
            now = self._monotonic()
            next_at = due_at + interval
            if next_at <= now:
                next_at += interval * ((now - next_at) // interval + 1)
            heapq.heappush(heap, (next_at, index))

    def close(self) -> None:
        """Release what the drivers opened (interrupts, buses) and end the workers; a hung sensor's
        worker ends when its read returns."""
        for slot in self._slots:
            if slot.worker is not None:
                slot.worker.submit(None)
            with slot.lock:
                idle = slot.busy_since is None
            try:
                if idle:
                    # Also when setup failed part-way: a driver in a child process is released.
                    slot.driver.close()
                else:
                    slot.driver.abandon()
            except Exception as exc:  # noqa: BLE001 - shutting down: report and go on
                slot.log.warning("sensor %s: close failed: %s", slot.config.name, exc)

    def _tick(self, slot: _Slot) -> None:
        now = self._monotonic()
        with slot.lock:
            if slot.busy_since is not None:
                if not slot.hung and now - slot.busy_since >= slot.config.timeout:
                    slot.hung = True
                    hung_for = now - slot.busy_since
                else:
                    return
            elif now < slot.retry_at:
                return
            else:
                slot.busy_since = now
                hung_for = None
        if hung_for is not None:
            self._failed(slot, "read has not returned after %.1f s (hung bus or driver?)" % hung_for, now,
                         hung=True)
        elif slot.driver.blocking:
            if slot.worker is None:
                slot.worker = _Worker(slot.config.name)
                slot.worker.start()
            slot.worker.submit(lambda: self._read(slot))
        else:
            self._read(slot)

    def _read(self, slot: _Slot) -> None:
        cfg = slot.config
        ts = self._wall()
        values: Optional[Dict[str, Value]] = None
        try:
            with slot.lock:
                ready = slot.ready
            if not ready:
                slot.driver.setup()
                with slot.lock:
                    slot.ready = True
            values = self._measure(slot)
        except (BoardError, SensorError) as exc:
            problem = str(exc)
        except Exception as exc:  # noqa: BLE001 - a driver bug must not stop the other sensors
            slot.log.debug("sensor %s raised", cfg.name, exc_info=True)
            problem = "%s: %s" % (type(exc).__name__, exc)
        now = self._monotonic()
        # One hold of the slot's lock: the read is over, and if it gave values, the failure state
        # is reset and they are processed. Under the lock, because a hung read's failure is recorded
        # by the schedule's thread, and the read may return on the worker at that very moment.
        results: List[Tuple[ChannelConfig, Optional[Tuple[Value, str]]]] = []
        with slot.lock:
            started, slot.busy_since = slot.busy_since, None
            was_hung, slot.hung = slot.hung, False
            failing, failures = slot.failing, slot.failures
            if values is not None:
                slot.failing, slot.failures, slot.error_published, slot.retry_at = None, 0, False, 0.0
                for channel in cfg.channels:
                    results.append((channel, slot.pipelines[channel.key].process(values[channel.key], now)))
        if was_hung and started is not None:
            slot.log.warning("sensor %s: the hung read returned after %.1f s", cfg.name, now - started)
        if values is None:
            self._failed(slot, problem, now)
            return
        if failing is not None:
            slot.log.info("sensor %s: reading again after %d failed attempts (%s)", cfg.name, failures, failing)
        # The sink is called outside the lock.
        for channel, result in results:
            if result is not None:
                self._sink(Sample(channel.name, result[0], channel.unit, ts, quality=result[1]))

    def _measure(self, slot: _Slot) -> Dict[str, Value]:
        cfg = slot.config
        rounds = [slot.driver.read_all() for _ in range(cfg.oversample)]
        values: Dict[str, Value] = {}
        for channel in cfg.channels:
            samples = [r.get(channel.key) for r in rounds]
            # Loops, not any()/all() over generators: this runs for every reading.
            for v in samples:
                if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise SensorError("the driver gave no number for %r" % (channel.key or cfg.name))
            for v in samples:
                if not math.isfinite(v):  # type: ignore[arg-type]
                    raise SensorError("the driver gave a non-finite value for %r" % (channel.key or cfg.name))
            values[channel.key] = samples[0] if len(samples) == 1 else statistics.fmean(samples)  # type: ignore
        return values

    def _failed(self, slot: _Slot, message: str, now: float, hung: bool = False) -> None:
        cfg = slot.config
        with slot.lock:  # see _read
            # A read hung past its timeout is no passing glitch: it is reported as an error at once,
            # not after error_after more timeouts (which would take error_after times as long).
            slot.failures = max(slot.failures + 1, cfg.error_after if hung else 0)
            # Doubling from the interval, capped: a sensor unplugged for a day costs little, and
            # one plugged back in is noticed within a minute.
            delay = min(cfg.interval * 2 ** (slot.failures - 1), max(cfg.interval, MAX_RETRY_DELAY))
            slot.retry_at = now + delay - cfg.interval / 2
            for pipeline in slot.pipelines.values():
                pipeline.forget()
            news, slot.failing = message != slot.failing, message
            report = slot.failures >= cfg.error_after and not slot.error_published
            if report:
                slot.error_published = True
                # A device may come back reset (replugged): set it up again before the next read.
                slot.ready = False
        if news:
            slot.log.warning("sensor %s: %s (retrying)", cfg.name, message)
        if report:
            ts = self._wall()
            for channel in cfg.channels:
                self._sink(Sample(channel.name, None, channel.unit, ts, quality=ERROR, error=message))
