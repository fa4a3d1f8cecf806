"""The contract every sensor driver fulfils."""

from __future__ import annotations

from typing import Any, ClassVar, List, Optional, Tuple, Union

from agent.board import Board

Value = Union[float, int]


class SensorError(Exception):
    """A reading could not be taken; the sampler logs it and tries again next interval."""


class Sensor:
    """One configured sensor.

    `Options` is a frozen dataclass of the driver's own config keys; the config loader
    builds it from the field types, so the schema lives next to the code that uses it.
    Hardware is opened in `setup`, not in the constructor, so a sensor that is missing
    at start can be retried without restarting the agent.
    """

    Options: ClassVar[type]

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

    def setup(self) -> None:
        """Open pins or files; raise BoardError or SensorError."""

    def read(self) -> Value:
        raise NotImplementedError
