"""A digital input (mraa.Gpio): 0 or 1, optionally inverted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from agent.board import DigitalIn
from agent.sensors.base import Sensor, Value


@dataclass(frozen=True)
class DigitalOptions:
    pin: int
    # Switches wired to ground with a pull-up read 0 when closed.
    active_low: bool = False


class DigitalSensor(Sensor):
    Options = DigitalOptions
    _gpio: Optional[DigitalIn] = None

    @classmethod
    def check_options(cls, options: DigitalOptions) -> List[Tuple[str, str]]:
        if options.pin < 0:
            return [("pin", "%d is not a GPIO pin number" % options.pin)]
        return []

    def setup(self) -> None:
        self._gpio = self.board.digital_in(self.options.pin)

    def read(self) -> Value:
        assert self._gpio is not None, "setup() first"
        level = self._gpio.read()
        return 1 - level if self.options.active_low else level
