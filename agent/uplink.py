"""Moves readings from the spool into the session, in seq order, within an in-flight window.

A reading leaves the spool only when the broker has acknowledged the message that
carried it; handing it to paho is not delivery.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, List

from agent.reading import Reading, encode_telemetry
from agent.session import Session
from agent.spool import Spool

log = logging.getLogger(__name__)


class Uplink:
    def __init__(self, spool: Spool, session: Session, device_id: str, topic: str, qos: int,
                 window: int = 20, batch_size: int = 1) -> None:
        self._spool = spool
        self._session = session
        self._device_id = device_id
        self._topic = topic
        self._qos = qos
        self._window = window
        self._batch_size = batch_size
        # Held from take() to publish() so two threads cannot hand paho seq 6 before seq 5.
        self._lock = threading.Lock()
        self.delivered = 0

    def pump(self) -> None:
        """Called after every new reading and after every network event; cheap when idle."""
        with self._lock:
            while self._session.connected and self._spool.in_flight < self._window:
                batch = self._spool.take(self._batch_size)
                if not batch:
                    return
                payload = encode_telemetry(self._device_id, batch)
                if not self._session.publish(self._topic, payload, self._qos, on_ack=self._acker(batch)):
                    self._spool.release(batch)
                    return

    def _acker(self, batch: List[Reading]) -> Callable[[], None]:
        seqs = [r.seq for r in batch]

        def ack() -> None:
            self._spool.ack(seqs)
            self.delivered += len(seqs)

        return ack

    def drain(self, timeout: float) -> bool:
        """Wait until every reading is acknowledged; False if some were not within `timeout`."""
        self.pump()
        return self._spool.wait_empty(timeout)
