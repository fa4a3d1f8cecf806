"""The session's listener, and what the agent says about itself: the health document (retained on
mqtt.health_topic and in health.file), Home Assistant's discovery and per-channel state.

The daemon wires it once: the session reports here after each CONNACK (announce, publish the
document) and after every network event (the uplink may take more). Session, spool and uplink
live as long as the agent (a reload reconfigures them), so nothing here is ever patched.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from agent.delivery.spool import Spool
from agent.delivery.uplink import Uplink
from agent.mqtt.session import ConnectionInfo, Session
from agent.sampling.reading import Reading
from agent.service import health_report
from agent.service.discovery import Discovery


class Reporter:
    def __init__(self, facts: health_report.Facts, session: Session, spool: Spool, uplink: Uplink,
                 discovery: Discovery) -> None:
        self._facts = facts
        self._session = session
        self._spool = spool
        self._uplink = uplink
        self._discovery = discovery
        self._file = health_report.HealthFile(facts.config.health.file)
        # One document at a time, so an older one built on another thread never lands after a newer one.
        self._lock = threading.Lock()
        self._next: Optional[float] = None
        self._resumed: Optional[bool] = None
        self._count_lock = threading.Lock()
        self._sampled = 0
        # The last warning or error logged, for the document; daemon.run() attaches it.
        self.errors = health_report.LastErrorHandler()

    @property
    def facts(self) -> health_report.Facts:
        return self._facts

    # -- the session's listener (agent.mqtt.connection.SessionListener), on its network thread --

    def connected(self, info: ConnectionInfo) -> None:
        # Right after a CONNACK: the document is small and the file lives on tmpfs, so
        # publishing here does not hold the session up.
        self._resumed = info.resumed if info.tls_version else None
        self._discovery.announce(self._session)
        self.publish()

    def writable(self) -> None:
        self._uplink.pump()

    # -- readings ----------------------------------------------------------------------------

    def sampled(self, reading: Reading) -> None:
        """A reading went into the spool: counted, and Home Assistant's per-channel state (the
        latest value, QoS 0: the telemetry is the record)."""
        with self._count_lock:
            self._sampled += 1
        state = self._discovery.state(reading)
        if state is not None:
            self._session.publish(state[0], state[1], qos=0, retain=True)

    # -- the document --------------------------------------------------------------------------

    def publish(self) -> None:
        """Build the health document, publish it retained (QoS 1) if connected, and write health.file."""
        with self._lock:
            report = self.document()
            # Judged from the document itself: a document built a moment before CONNACK says
            # "disconnected" and must not become the retained one.
            if report.connection.state == health_report.CONNECTED:
                self._session.publish(self._facts.config.mqtt.health_topic, report.to_json().encode("utf-8"),
                                      qos=1, retain=True)
            self._file.write(report)

    def document(self, stopped: bool = False) -> health_report.HealthReport:
        progress = health_report.Progress(self._sampled, self._uplink.delivered, self._resumed, self.errors.last)
        return health_report.gather(self._facts, self._session, self._spool, progress, stopped=stopped)

    def stopped(self) -> None:
        self._file.write(self.document(stopped=True))

    def tick(self, tick_interval: float) -> None:
        """From the sampler's tick: publish when due (a tick may come half a tick interval early)."""
        now, interval = time.monotonic(), self._facts.config.health.interval
        if self._next is None or now >= self._next - tick_interval / 2:
            self._next = (self._next or now) + interval
            if self._next < now:
                self._next = now + interval
            self.publish()

    def reconfigure(self, facts: health_report.Facts, discovery: Discovery) -> None:
        """A reload: the new config's facts and entities (announced at once when connected, which
        also clears those the new config no longer has)."""
        if facts.config.health != self._facts.config.health:
            self._file = health_report.HealthFile(facts.config.health.file)
            self._next = None
        self._facts = facts
        self._discovery = discovery
        if self._session.connected:
            discovery.announce(self._session)
