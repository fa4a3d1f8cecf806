"""Moves readings from the spool into the session, in seq order, in batches, within an in-flight window.

A reading leaves the spool only when the broker has acknowledged the message that
carried it; handing it to paho is not delivery.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List, Optional

from agent.config.schema import BatchConfig
from agent.delivery.spool import Spool
from agent.mqtt.session import Session
from agent.sampling.reading import Reading, encode_telemetry
from agent.waker import Waker

log = logging.getLogger(__name__)


class Uplink:
    def __init__(self, spool: Spool, session: Session, device_id: str, topic: str, qos: int, *,
                 window: int, batch: BatchConfig) -> None:
        self._spool = spool
        self._session = session
        self._device_id = device_id
        self._topic = topic
        self._qos = qos
        self._batch = batch
        # The window counts messages; the spool counts readings.
        self._window = window
        # Held from take() to publish() so two threads cannot hand paho seq 6 before seq 5; and
        # over the flags below, which the sampler, the network thread and a stop all touch.
        self._lock = threading.Lock()
        self._partial_since: Optional[float] = None
        # batch.max_delay's deadline: a thread sleeps on it, started with the first partial batch.
        self._timer: Optional[Waker] = None
        self._retired = False
        # Set by drain(): partial batches leave at once, without waiting for max_delay.
        self._flushing = False
        # Between hold() and release(): a wake-up's readings are being appended; they leave together.
        self._held = False
        self.delivered = 0

    def hold(self) -> None:
        """Readings appended from now until release() belong to one wake-up: no pump sends any of
        them before release(), so they leave in one message (up to batch.max_readings)."""
        with self._lock:
            self._held = True

    def release(self) -> None:
        """The wake-up is over: send what it appended (and anything else waiting)."""
        with self._lock:
            self._held = False
        self.pump()

    def pump(self) -> None:
        """Called after every new reading and after every network event; cheap when idle."""
        with self._lock:
            while (not self._held and not self._retired and self._session.connected
                   and self._spool.in_flight < self._window * self._batch.max_readings):
                if not self._batch_ready():
                    return
                batch = self._spool.take(self._batch.max_readings)
                if not batch:
                    return
                self._partial_since = None
                payload = encode_telemetry(self._device_id, batch)
                if not self._session.publish(self._topic, payload, self._qos, on_ack=self._acker(batch),
                                             on_refused=self._refuser(batch)):
                    self._spool.release(batch)
                    return

    def rebatch(self, device_id: str, batch: BatchConfig) -> None:
        """A reload changed the device id or the batching: the same uplink goes on with them, so
        what is in flight is acknowledged into the one count and no timer of the old batching
        sends anything. A partial batch waits max_delay again from now."""
        with self._lock:
            self._device_id = device_id
            self._batch = batch
            self._partial_since = None
            if self._timer is not None:
                self._timer.set(None)
        self.pump()

    def retarget(self, topic: str, qos: int, window: int) -> None:
        """A reload changed mqtt.topic, mqtt.qos or mqtt.inflight: the same uplink goes on with
        them (the session it hands to outlives reloads), so every acknowledgement counts here."""
        with self._lock:
            self._topic, self._qos, self._window = topic, qos, window
            self._window_readings = window * self._batch.max_readings

    def retire(self) -> None:
        """Hand nothing more to this session (it is being replaced). Not a lock held across the
        session's stop: its network thread calls pump() and must not block on us while stopping."""
        with self._lock:
            self._retired = True
            if self._timer is not None:
                self._timer.ring()  # its thread ends

    def _batch_ready(self) -> bool:
        """A full batch, or a partial one that has waited max_delay (then a timer comes back for it)."""
        size, delay = self._batch.max_readings, self._batch.max_delay
        unsent = self._spool.depth - self._spool.in_flight
        if unsent <= 0:
            return False
        if size == 1 or delay <= 0 or unsent >= size or self._flushing:
            return True
        now = time.monotonic()
        if self._partial_since is None:
            self._partial_since = now
            self._arm(now + delay)
        return now - self._partial_since >= delay

    def _arm(self, deadline: float) -> None:
        """Under _lock: pump again at `deadline`."""
        if self._timer is None:
            self._timer = Waker()
            threading.Thread(target=self._wait_for_partial, args=(self._timer,), name="uplink-batch",
                             daemon=True).start()
        self._timer.set(deadline)

    def _wait_for_partial(self, timer: Waker) -> None:
        while True:
            timer.wait()
            with self._lock:
                if self._retired:
                    self._timer = None
                    break
            self.pump()
        timer.close()

    def _acker(self, batch: List[Reading]) -> Callable[[], None]:
        seqs = [r.seq for r in batch]

        def ack() -> None:
            self._spool.ack(seqs)
            self.delivered += len(seqs)

        return ack

    def _refuser(self, batch: List[Reading]) -> Callable[[], None]:
        seqs = [r.seq for r in batch]

        def refused() -> None:
            # The broker will not take this message: sent again it would be refused again (and on
            # MQTT 3.1.1 cost the connection), and held it would block every reading behind it.
            # Its readings leave the spool, counted as dropped (refused); the session logged why.
            self._spool.reject(seqs)

        return refused

    def drain(self, timeout: float) -> bool:
        """Send partial batches now and wait until every reading is acknowledged; False on timeout."""
        with self._lock:
            self._flushing = True
        self.pump()
        return self._spool.wait_empty(timeout)
