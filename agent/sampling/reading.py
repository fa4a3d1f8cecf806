"""A reading, and the telemetry message that carries readings to the broker."""

from __future__ import annotations

import json
from typing import Any, Dict, NamedTuple, Optional, Sequence

from agent.hardware.sensors import Value

GOOD = "good"
OUT_OF_RANGE = "out_of_range"
ERROR = "error"


# Sample and Reading are NamedTuples, immutable as frozen dataclasses are, but made in a third of
# the time: every reading makes one of each (W1: 200 a second; docs/performance.md, issue 16).
class Sample(NamedTuple):
    """What the sampler measured, before the spool gives it a sequence number."""

    sensor: str
    value: Optional[Value]
    unit: Optional[str]
    # Wall-clock time of sampling, so a reading replayed late still says when it was true.
    ts: float
    quality: str = GOOD
    error: Optional[str] = None


class Reading(NamedTuple):
    seq: int
    ts: float
    sensor: str
    value: Optional[Value]
    unit: Optional[str]
    quality: str = GOOD
    error: Optional[str] = None

    @classmethod
    def numbered(cls, seq: int, sample: Sample) -> "Reading":
        return cls(seq, sample.ts, sample.sensor, sample.value, sample.unit, sample.quality, sample.error)

    def as_json(self) -> Dict[str, Any]:
        item: Dict[str, Any] = {"sensor": self.sensor, "value": self.value}
        if self.unit is not None:
            item["unit"] = self.unit
        item["ts"] = round(self.ts, 3)
        item["seq"] = self.seq
        # Only when it is not "good": the common case stays small on the wire.
        if self.quality != GOOD:
            item["quality"] = self.quality
        if self.error is not None:
            item["error"] = self.error
        return item


def encode_telemetry(device_id: str, readings: Sequence[Reading]) -> bytes:
    """The telemetry contract: {"device": ..., "readings": [...]}; consumers de-duplicate by seq."""
    message = {"device": device_id, "readings": [r.as_json() for r in readings]}
    return json.dumps(message, separators=(",", ":")).encode("utf-8")
