"""The contract every sensor driver fulfils."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Union

from agent.errors import HardwareError
from agent.hardware.board import Board

Value = Union[float, int]


class SensorError(HardwareError):
    """A reading could not be taken (bad CRC, device busy, no data); retried with backoff."""


@dataclass(frozen=True)
class Channel:
    """One value a sensor yields. `key` is "" for a single-valued sensor; a multi-valued one
    (bme280: temperature, humidity, pressure) publishes each as `<sensor name>.<key>`."""

    key: str
    unit: Optional[str]


class Sensor:
    """One configured sensor.

    `Options` is a frozen dataclass of the driver's own config keys; the config loader
    builds it from the field types, so the schema lives next to the code that uses it.
    Hardware is opened in `setup`, not in the constructor, so a sensor that is missing
    at start is retried without restarting the agent.

    Single-valued drivers implement `read`; multi-valued ones override `channels` and
    `read_all`. Reads may block (I2C conversions): the sampler runs them off its thread.
    """

    Options: ClassVar[type]
    # Oversampling reads a sensor several times per interval: meaningless for counters.
    can_oversample: ClassVar[bool] = True
    # A read that may wait on a bus (an I2C conversion, a stuck device) runs on a worker thread
    # of its own; a quick one (an ADC or GPIO register, a /proc file) runs on the schedule's
    # thread, sparing a thread wake-up per reading.
    blocking: ClassVar[bool] = True
    # Whether the driver calls the board (libmraa); those that only read /proc or /sys files do not,
    # and need no process of their own to survive a hung hardware call.
    uses_board: ClassVar[bool] = True

    def __init__(self, name: str, options: Any, board: Board) -> None:
        self.name = name
        self.options = options
        self.board = board

    @classmethod
    def check_options(cls, options: Any) -> List[Tuple[str, str]]:
        """Problems beyond types, as (key, message) pairs."""
        return []

    @classmethod
    def default_unit(cls, options: Any) -> Optional[str]:
        return None

    @classmethod
    def channels(cls, options: Any) -> Tuple[Channel, ...]:
        return (Channel("", cls.default_unit(options)),)

    def setup(self) -> None:
        """Open pins or buses, configure the part; raise BoardError or SensorError."""

    def read(self) -> Value:
        raise NotImplementedError

    def read_all(self) -> Dict[str, Value]:
        """Every channel's value by key; raise BoardError or SensorError."""
        return {"": self.read()}

    def close(self) -> None:
        """Release pins and interrupts (on reload or stop)."""

    def abandon(self) -> None:
        """The sensor is dropped while a read is still under way on another thread (a hung call):
        release what can be released without waiting for it. Nothing, for a driver in this process."""
