"""A reading, and the telemetry message that carries readings to the broker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from agent.hardware.sensors import Value

GOOD = "good"
OUT_OF_RANGE = "out_of_range"
ERROR = "error"


@dataclass(frozen=True)
class Sample:
    """What the sampler measured, before the spool gives it a sequence number."""

    sensor: str
    value: Optional[Value]
    unit: Optional[str]
    # Wall-clock time of sampling, so a reading replayed late still says when it was true.
    ts: float
    quality: str = GOOD
    error: Optional[str] = None


@dataclass(frozen=True)
class Reading:
    seq: int
    ts: float
    sensor: str
    value: Optional[Value]
    unit: Optional[str]
    quality: str = GOOD
    error: Optional[str] = None

    @classmethod
    def numbered(cls, seq: int, sample: Sample) -> "Reading":
        return cls(seq=seq, ts=sample.ts, sensor=sample.sensor, value=sample.value, unit=sample.unit,
                   quality=sample.quality, error=sample.error)

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
