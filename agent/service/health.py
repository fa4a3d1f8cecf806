"""Is the agent working? The evidence for systemd's watchdog, and the one-line status.

The watchdog is petted from the sampler's loop, so a stuck main thread stops the pings by
itself; before petting, the other long-lived thread (the MQTT session's) must be asleep with a
deadline ahead or have been busy only briefly. A live-looking zombie gets restarted instead.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, List, Optional, Protocol

from agent.delivery.spool import Spool
from agent.delivery.uplink import Uplink
from agent.mqtt.session import Session

log = logging.getLogger(__name__)

class NotifierLike(Protocol):
    """What Health needs of agent.service.notify.Notifier."""

    def watchdog(self, status: Optional[str] = None) -> None: ...

    def status(self, text: str) -> None: ...


# Session.last_alive is "now" while its thread sleeps with a deadline ahead; busy (connect() takes
# up to ~5 s) or asleep past its deadline, it stands still: 30 s behind means stuck.
STALL_AFTER = 30.0


class Health:
    def __init__(self, session: Session, spool: Spool, uplink: Uplink, notifier: NotifierLike,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._session = session
        self._spool = spool
        self._uplink = uplink
        self._notifier = notifier
        self._monotonic = monotonic
        self._withheld: Optional[str] = None

    def stalled(self) -> List[str]:
        problems = []
        age = self._monotonic() - self._session.last_alive
        if age > STALL_AFTER:
            problems.append("the MQTT session thread has not come round for %.0f s" % age)
        late = self._spool.commit_overdue()
        if late > STALL_AFTER:
            problems.append("the spool writer is %.0f s late with a commit" % late)
        return problems

    def tick(self) -> None:
        """Called from the sampler's loop: its being called is the sampler's proof of life."""
        problems = self.stalled()
        if problems:
            if self._withheld != problems[0]:
                log.error("not petting the watchdog: %s", "; ".join(problems))
                self._withheld = problems[0]
            self._notifier.status(self.status_line())
        else:
            self._withheld = None
            self._notifier.watchdog(self.status_line())

    def status_line(self) -> str:
        s = self._session
        if s.connected and s.connected_since is not None:
            link = "connected since %s" % _clock(s.connected_since)
        else:
            since = " since %s" % _clock(s.disconnected_since) if s.disconnected_since else ""
            link = "not connected%s%s" % (since, ": %s" % s.problem if s.problem else "")
        dropped = self._spool.dropped
        backlog = "spool %d" % self._spool.depth + (" (%d dropped)" % dropped if dropped else "")
        return "%s; %d sent; %s" % (link, self._uplink.delivered, backlog)


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))

