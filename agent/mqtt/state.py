"""Where one connection stands: connected or not and since when, how often it came back, and why
it is not connected (a problems.SessionProblem, logged once per change of state)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional, Tuple

from agent.config.schema import ReconnectConfig
from agent.mqtt.problems import ConnectRefused, SessionProblem


class ConnectionState:
    def __init__(self, retry: ReconnectConfig, had_connack: bool) -> None:
        self._connected = threading.Event()
        self._retry = retry
        self._problem: Optional[SessionProblem] = None
        self.connected_since: Optional[float] = None
        self.disconnected_since: Optional[float] = time.time()
        self.reconnects = 0
        # Set at the first CONNACK: later connects ask the broker to resume the session.
        self.had_connack = had_connack
        # CONNACK's session-present flag.
        self.session_present = False
        # This attempt's evidence: a refusing CONNACK, and paho's (or the broker's) last words.
        self.refusal: Optional[ConnectRefused] = None
        self.socket_error: Optional[str] = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def problem(self) -> Optional[str]:
        """Why the connection is down, in plain words; None when all is well."""
        problem = self._problem
        return str(problem) if problem is not None else None

    def attempt(self) -> None:
        """A new connection attempt: the last one's evidence is forgotten."""
        self.refusal = None
        self.socket_error = None

    def accepted(self, session_present: bool) -> None:
        """A CONNACK that accepts (not yet connected: the subscriptions go first)."""
        self.refusal = None
        self.had_connack = True
        self.session_present = session_present
        self.connected_since = time.time()
        self.disconnected_since = None

    def up(self) -> None:
        self._connected.set()

    def down(self, lost: bool = False) -> None:
        self._connected.clear()
        if lost:
            self.disconnected_since = time.time()

    def settled(self, where: Tuple[str, int], how: str, logger: "logging.LoggerAdapter[logging.Logger]") -> None:
        """Connected (on the network thread): said once, with what was wrong before."""
        if self._problem is not None:
            self.reconnects += 1
            logger.info("connected to %s:%d again, %s (was: %s)", *where, how, self._problem)
        else:
            logger.info("connected to %s:%d, %s", *where, how)
        self._problem = None

    def report(self, problem: SessionProblem, where: Tuple[str, int],
               logger: "logging.LoggerAdapter[logging.Logger]") -> None:
        # Once per state change (SessionProblem.same_state): a broker down for an hour must not
        # fill the journal.
        if problem.same_state(self._problem):
            logger.debug("%s:%d: still failing: %s", *where, problem)
            return
        # Before the log line: a health document built meanwhile must not show the logged error
        # as the last one while the session still says nothing is wrong.
        self._problem = problem
        # The journal gets the raw TLS error or MQTT reason code as fields beside the plain words.
        # The adapter's logger: an adapter replaces `extra` with its own.
        logger.logger.error("%s:%d: %s; retrying with backoff (%g-%g s)", *where, problem,
                            self._retry.min_delay, self._retry.max_delay,
                            extra=dict(logger.extra or {}, **problem.fields))
