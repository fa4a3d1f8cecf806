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

log = logging.getLogger(__name__)


class Uplink:
    def __init__(self, spool: Spool, session: Session, device_id: str, topic: str, qos: int,
                 window: int = 20, batch: Optional[BatchConfig] = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._spool = spool
        self._session = session
        self._device_id = device_id
        self._topic = topic
        self._qos = qos
        self._batch = batch = batch or BatchConfig()
        # The window counts messages; the spool counts readings.
        self._window = window
        self._window_readings = window * batch.max_readings
        self._monotonic = monotonic
        # Held from take() to publish() so two threads cannot hand paho seq 6 before seq 5.
        self._lock = threading.Lock()
        self._partial_since: Optional[float] = None
        self._timer: Optional[threading.Timer] = None
        self._retired = False
        # Set by drain(): partial batches leave at once, without waiting for max_delay.
        self._flushing = False
        # Between hold() and release(): a wake-up's readings are being appended; they leave together.
        self._held = False
        self.delivered = 0

    def hold(self) -> None:
        """Readings appended from now until release() belong to one wake-up: no pump sends any of
        them before release(), so they leave in one message (up to batch.max_readings)."""
        self._held = True

    def release(self) -> None:
        """The wake-up is over: send what it appended (and anything else waiting)."""
        self._held = False
        self.pump()

    def pump(self) -> None:
        """Called after every new reading and after every network event; cheap when idle."""
        with self._lock:
            while (not self._held and not self._retired and self._session.connected
                   and self._spool.in_flight < self._window_readings):
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
            self._window_readings = self._window * batch.max_readings
            self._partial_since = None
            self._cancel_timer()
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
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _batch_ready(self) -> bool:
        """A full batch, or a partial one that has waited max_delay (then a timer comes back for it)."""
        size, delay = self._batch.max_readings, self._batch.max_delay
        unsent = self._spool.depth - self._spool.in_flight
        if unsent <= 0:
            return False
        if size == 1 or delay <= 0 or unsent >= size or self._flushing:
            return True
        now = self._monotonic()
        if self._partial_since is None:
            self._partial_since = now
        waited = now - self._partial_since
        if waited >= delay:
            return True
        if self._timer is None or not self._timer.is_alive():
            self._timer = threading.Timer(delay - waited, self.pump)
            self._timer.daemon = True
            self._timer.start()
        return False

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
        self._flushing = True
        self.pump()
        return self._spool.wait_empty(timeout)
