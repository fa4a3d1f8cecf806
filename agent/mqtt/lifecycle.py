"""A connection's life beyond its socket: the retained status it announces (online after each
CONNACK, offline once when it stops), when it must stop, the watchdog's evidence of its thread,
and the answer of the one MQTT 3.1.1 probe."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Tuple

from agent.mqtt.messages import JSON, ONLINE, TEXT
from agent.mqtt.socket_io import Liveness


class Lifecycle:
    def __init__(self, online: bytes) -> None:
        # The retained status after each CONNACK: the daemon's is a JSON object that says where
        # this run's seqs start (agent/service/health_report.online_status).
        self.online: Tuple[bytes, str] = (online, TEXT if online == ONLINE else JSON)
        self.liveness = Liveness()
        self._stop = threading.Event()
        self.deadline = 0.0
        self._offline_lock = threading.Lock()
        self._offline_published = False
        self.offline_acked = threading.Event()
        # The answer of the one MQTT 3.1.1 probe; None until asked.
        self._probe: Optional[bool] = None

    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self._stop.set()

    def sleep(self, seconds: float) -> None:
        """The backoff: over at once when a stop comes."""
        self._stop.wait(seconds)

    def publish_offline_once(self, connected: bool, publish: Callable[[Callable[[], None]], None]) -> bool:
        """Once, from whichever thread gets here first while connected (a clean DISCONNECT does
        not fire the Last Will); `publish(on_ack)` sends it. Whether it is out."""
        with self._offline_lock:
            if connected and not self._offline_published:
                self._offline_published = True
                publish(self.offline_acked.set)
            return self._offline_published

    def speaks_311_only(self, probe: Callable[[], bool]) -> bool:
        if self._probe is None:
            self._probe = probe()
        return self._probe
