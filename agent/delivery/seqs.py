"""seq numbers: where a run starts, and the durable reservation that covers those handed out.

`seq` only grows, also across crashes: a seq is handed out only below a limit kept durably (in
the spool file and in `<name>.seq`), so after a crash the numbering continues after the
reservation, never inside it (docs/delivery.md).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

# Seqs reserved durably ahead of use; the reservation is extended when half of it is used.
DEFAULT_SEQ_BLOCK = 10_000
# The floor of seq at every start: the wall clock in units of 10 us (1.7e14 in 2025, 2**53 in the
# year 4800: exact in a JSON double). seq may jump up to it, never back, even with every state
# file gone; it stays ahead of every seq already used as long as the agent has averaged under
# 100,000 readings a second since it last started (200/s is a busy board). docs/delivery.md.
SEQ_PER_SECOND = 100_000


# Above every seq (they stay below 2**53, see clock_floor). Not sys.maxsize: that is 2**31 - 1 on
# the 32-bit board, below today's clock floor, so an in-memory spool handed nothing out there.
NO_LIMIT = 2 ** 63 - 1


def clock_floor(now: float) -> int:
    """The lowest seq a start at wall-clock time `now` may use (at least 1; a clock at 1970 gives
    next to nothing, so the floor from the state files decides then)."""
    if not math.isfinite(now) or now <= 0:
        return 1
    return max(1, int(now * SEQ_PER_SECOND))


class Seqs:
    """The next seq, and the durable reservation below which seqs may be handed out."""

    def __init__(self, first: int, block: int, reserved: bool) -> None:
        self._next = first
        self._first_new = first  # this run's first: the jump to it is not walked one seq at a time
        self._safe = first if reserved else NO_LIMIT
        self._block = block

    def take(self) -> int:
        seq = self._next
        self._next = seq + 1
        return seq

    def peek(self) -> int:
        return self._next

    def new_after(self, seq: int) -> Tuple[int, int]:
        """The seqs handed out in this run after `seq`, as a range's (start, stop): the jump from
        the last run's to this run's first (the clock's floor, a reservation) is not walked."""
        return max(seq, self._first_new - 1) + 1, self._next

    def covers(self, seq: int) -> bool:
        return seq < self._safe

    def low(self) -> bool:
        """The reservation is half used: the next commit extends it."""
        return self._safe - self._next < self._block // 2

    def wanted(self, final: bool) -> Optional[int]:
        """The limit the next commit writes: the exact next seq at the last one (no gap at the next start)."""
        if final:
            return self._next
        return self._next + self._block if self.low() else None

    def reserve(self, limit: int) -> None:
        self._safe = limit

    def unreserved(self) -> None:
        """No file: nothing to reserve in."""
        self._safe = NO_LIMIT

    def floor(self) -> int:
        """What a new seq file must hold: at least the reservation and the next seq."""
        return max(self._safe if self._safe != NO_LIMIT else 0, self._next)
