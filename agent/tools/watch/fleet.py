"""The fleet as `edison-agent watch` sees it: one Board per device, fed from the broker's messages.

Loss and duplicates are counted by the consumer's rule (docs/delivery.md):
1. de-duplicate by (device, seq);
2. a gap inside a run is loss;
3. a jump at a run's start (the seq_start its online status announces) is not.

Memory stays small with long runs and many boards: per run, the highest seq seen and the gaps
below it (a list of ranges, empty while nothing is lost), never a set of every seq.
"""

from __future__ import annotations

import bisect
import collections
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

# Seconds of arrivals behind the readings-per-second figure.
RATE_WINDOW = 10.0


class Run:
    """One run's seqs as seen: the highest, and the ranges missing below it."""

    def __init__(self, start: Optional[int], announced_live: bool) -> None:
        self.start = start
        # Announced while we watched, before any of its readings: its readings are counted from
        # its start. Otherwise (a retained status, or none) from the first one seen.
        self.high: Optional[int] = start - 1 if (announced_live and start is not None) else None
        self.gaps: List[Tuple[int, int]] = []  # inclusive, sorted, disjoint
        # Set when the watcher itself missed messages (its session was not resumed): the next
        # reading closes no gap, since what came meanwhile is unknown.
        self.resync = False

    @property
    def lost(self) -> int:
        return sum(b - a + 1 for a, b in self.gaps)

    def add(self, seq: int) -> bool:
        """Count a reading; False if it is a duplicate."""
        if self.high is None or seq > self.high:
            if self.high is not None and seq > self.high + 1 and not self.resync:
                self.gaps.append((self.high + 1, seq - 1))
            self.high = seq
            self.resync = False
            return True
        index = bisect.bisect_right(self.gaps, (seq, seq)) - 1
        for i in (index, index + 1):
            if 0 <= i < len(self.gaps) and self.gaps[i][0] <= seq <= self.gaps[i][1]:
                a, b = self.gaps.pop(i)
                # A late arrival fills its place in a gap: loss that was not.
                self.gaps[i:i] = [r for r in ((a, seq - 1), (seq + 1, b)) if r[0] <= r[1]]
                return True
        return False


@dataclass
class Board:
    device: str
    online: Optional[bool] = None
    # Wall time the online/offline state began, as best known (see Fleet.status).
    since: Optional[float] = None
    since_exact: bool = True
    seq_start: Optional[int] = None
    version: Optional[str] = None
    readings: int = 0
    duplicates: int = 0
    last: Optional[Dict[str, Any]] = None
    health: Optional[Dict[str, Any]] = None
    runs: Dict[int, Run] = field(default_factory=dict)
    arrivals: Deque[Tuple[float, int]] = field(default_factory=collections.deque)

    @property
    def lost(self) -> int:
        return sum(run.lost for run in self.runs.values())

    def rate(self, now: float, watched: float) -> float:
        """Readings a second over the last RATE_WINDOW seconds (or since the watcher started)."""
        while self.arrivals and self.arrivals[0][0] < now - RATE_WINDOW:
            self.arrivals.popleft()
        return sum(n for _, n in self.arrivals) / max(1.0, min(RATE_WINDOW, watched))

    def run_for(self, seq: int) -> Run:
        starts = [s for s in self.runs if s <= seq]
        key = max(starts) if starts else 0
        run = self.runs.get(key)
        if run is None:
            # Readings from before any run we know of (an older agent, or an earlier run's backlog).
            run = self.runs[key] = Run(None, announced_live=False)
        return run

    def row(self, now: float, watched: float) -> Dict[str, Any]:
        """What the table shows, as plain values (also the --json output)."""
        health = self.health or {}
        spool = health.get("spool") or {}
        connection = health.get("connection") or {}
        certificate = health.get("certificate") or {}
        return {
            "device": self.device,
            "online": self.online,
            "since": self.since,
            # False: `since` is a bound (offline since at most then), from the last health document.
            "since_exact": self.since_exact,
            "readings_per_s": round(self.rate(now, watched), 2),
            "readings": self.readings,
            "last_reading": self.last,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "runs": len([k for k in self.runs if k]),
            "seq_start": self.seq_start,
            "spool_depth": spool.get("depth"),
            "reconnects": connection.get("reconnects"),
            "cert_days_left": certificate.get("days_left"),
            "health_time": health.get("time"),
            "version": self.version or health.get("version"),
        }


class Fleet:
    """Every board under a topic prefix; fed by the MQTT thread, read by the display (one lock)."""

    def __init__(self, prefix: str = "edison", clock: Any = time.time, monotonic: Any = time.monotonic) -> None:
        self.prefix = prefix
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._boards: Dict[str, Board] = {}
        self._started = monotonic()
        self.ignored = 0

    @property
    def filters(self) -> List[str]:
        return ["%s/+/telemetry" % self.prefix, "%s/+/status" % self.prefix, "%s/+/health" % self.prefix]

    def message(self, topic: str, payload: bytes, retained: bool = False, redelivered: bool = False) -> None:
        """One message from the broker. `redelivered`: the broker's DUP flag, a copy it sends us
        again (its own retry, not the board's): not a duplicate reading."""
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != self.prefix:
            return
        _, device, kind = parts
        try:
            with self._lock:
                board = self._boards.get(device)
                if board is None:
                    board = self._boards[device] = Board(device)
                if kind == "telemetry":
                    self._telemetry(board, payload, redelivered)
                elif kind == "status":
                    self._status(board, payload, retained)
                elif kind == "health":
                    board.health = json.loads(payload) if payload else None
                    self._since_from_health(board)
        except (ValueError, KeyError, TypeError, AttributeError):
            # A message that is not the contract (another program on the same prefix): counted, not fatal.
            self.ignored += 1

    def _telemetry(self, board: Board, payload: bytes, redelivered: bool) -> None:
        readings = json.loads(payload)["readings"]
        fresh = 0
        for reading in readings:
            seq = int(reading["seq"])
            if board.run_for(seq).add(seq):
                fresh += 1
                board.last = reading
            elif not redelivered:
                board.duplicates += 1
        board.readings += fresh
        now = self._monotonic()
        board.arrivals.append((now, fresh))
        # Pruned here too, not only when drawn: --once may watch for hours without drawing.
        while board.arrivals[0][0] < now - RATE_WINDOW:
            board.arrivals.popleft()

    def _status(self, board: Board, payload: bytes, retained: bool) -> None:
        now = self._clock()
        if payload.startswith(b"{"):
            status = json.loads(payload)
            online = status.get("status") == "online"
            start = status.get("seq_start")
            board.version = status.get("version", board.version)
            if isinstance(start, int):
                self._announce(board, start, live=not retained)
        else:
            online = payload.strip() == b"online"
        if online != board.online:
            board.online = online
            # A retained status is old news of unknown age: the health document may say when.
            board.since = None if retained else now
            board.since_exact = True
            self._since_from_health(board)

    def _announce(self, board: Board, start: int, live: bool) -> None:
        if board.seq_start is not None and start < board.seq_start:
            # The seqs went back (a board whose spool was wiped): a new numbering, judged afresh.
            board.runs.clear()
        board.seq_start = start
        if start not in board.runs:
            board.runs[start] = Run(start, announced_live=live and not self._has_readings_from(board, start))

    @staticmethod
    def _has_readings_from(board: Board, start: int) -> bool:
        return any(run.high is not None and run.high >= start for run in board.runs.values())

    @staticmethod
    def _since_from_health(board: Board) -> None:
        if board.since is not None or board.health is None:
            return
        connection = board.health.get("connection") or {}
        if board.online and connection.get("state") == "connected":
            board.since = connection.get("since")
        elif board.online is False:
            # Offline since at most the last document it sent.
            board.since = board.health.get("time")
            board.since_exact = False

    def lost_continuity(self) -> None:
        """The watcher's own session was not resumed: what came meanwhile is unknown, so no gap
        is counted across it."""
        with self._lock:
            for board in self._boards.values():
                for run in board.runs.values():
                    run.resync = True

    def rows(self) -> List[Dict[str, Any]]:
        now = self._monotonic()
        with self._lock:
            return [board.row(now, now - self._started) for _, board in sorted(self._boards.items())]
