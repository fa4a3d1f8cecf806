"""The spool at a glance: what the status line, the health document and `edison-agent status` show."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class SpoolStats:
    """The spool at a glance, for the agent's status."""

    durable: bool
    depth: int
    in_flight: int
    bytes: int
    max_bytes: int
    dropped_full: int
    dropped_age: int
    dropped_corrupt: int
    commits: int
    # Seconds since the last durable commit; None before the first (or when not durable).
    last_commit_age: Optional[float]
    # The spool file and its WAL on disk.
    file_bytes: int
    # Readings in messages the broker refused (agent.mqtt.refusals): never sent again.
    dropped_refused: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_age + self.dropped_corrupt + self.dropped_refused

    def describe(self) -> str:
        committed = ("last commit %.1f s ago" % self.last_commit_age if self.last_commit_age is not None
                     else "no commit yet" if self.durable else "in memory only")
        return ("spool: %d readings (%d in flight), %d of %d bytes, dropped %d (full %d, age %d, corrupt %d, "
                "refused %d), %s" % (self.depth, self.in_flight, self.bytes, self.max_bytes, self.dropped,
                                     self.dropped_full, self.dropped_age, self.dropped_corrupt, self.dropped_refused,
                                     committed))


def file_bytes(path: Path) -> int:
    """The spool file and its WAL on disk."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(str(path) + suffix).st_size
        except OSError:
            pass
    return total
