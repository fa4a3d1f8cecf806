"""A reading, and the telemetry message that carries readings to the broker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from agent.sensors import Value


@dataclass(frozen=True)
class Reading:
    seq: int
    # Wall-clock time of sampling, so a reading replayed late still says when it was true.
    ts: float
    sensor: str
    value: Value
    unit: Optional[str]

    def as_json(self) -> Dict[str, Any]:
        item: Dict[str, Any] = {"sensor": self.sensor, "value": self.value}
        if self.unit is not None:
            item["unit"] = self.unit
        item["ts"] = round(self.ts, 3)
        item["seq"] = self.seq
        return item


def encode_telemetry(device_id: str, readings: Sequence[Reading]) -> bytes:
    """The telemetry contract: {"device": ..., "readings": [...]}; consumers de-duplicate by seq."""
    message = {"device": device_id, "readings": [r.as_json() for r in readings]}
    return json.dumps(message, separators=(",", ":")).encode("utf-8")
