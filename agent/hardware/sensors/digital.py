"""A digital input (mraa.Gpio): 0 or 1, optionally inverted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from agent.hardware.board import PULLS, DigitalIn
from agent.hardware.sensors.base import Sensor, Value


@dataclass(frozen=True)
class DigitalOptions:
    pin: int
    # The pin's internal resistor: "up", "down" or "none" (an external one, or a driven signal).
    pull: str = "none"
    # Switches wired to ground with a pull-up read 0 when closed.
    active_low: bool = False


class DigitalSensor(Sensor):
    blocking = False
    Options = DigitalOptions
    _gpio: Optional[DigitalIn] = None

    @classmethod
    def check_options(cls, options: DigitalOptions) -> List[Tuple[str, str]]:
        problems = []
        if options.pin < 0:
            problems.append(("pin", "%d is not a GPIO pin number" % options.pin))
        if options.pull not in PULLS:
            problems.append(("pull", "%r is not one of: %s" % (options.pull, ", ".join(PULLS))))
        return problems

    def setup(self) -> None:
        self._gpio = self.board.digital_in(self.options.pin, self.options.pull)

    def read(self) -> Value:
        assert self._gpio is not None, "setup() first"
        level = self._gpio.read()
        return 1 - level if self.options.active_low else level
