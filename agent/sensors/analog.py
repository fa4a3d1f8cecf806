"""An analog input (mraa.Aio): raw ADC count, scaled linearly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from agent.board import AnalogIn
from agent.sensors.base import Sensor, Value


@dataclass(frozen=True)
class AnalogOptions:
    pin: int
    # mraa reads the Edison's 12-bit ADC as 10 bits unless asked for 12.
    bits: int = 10
    scale: float = 1.0
    offset: float = 0.0


class AnalogSensor(Sensor):
    Options = AnalogOptions
    _adc: Optional[AnalogIn] = None

    @classmethod
    def check_options(cls, options: AnalogOptions) -> List[Tuple[str, str]]:
        problems = []
        if options.pin < 0:
            problems.append(("pin", "%d is not an analog pin (A0-A5 are 0-5)" % options.pin))
        if options.bits not in (10, 12):
            problems.append(("bits", "%d is not supported: use 10 or 12" % options.bits))
        return problems

    def setup(self) -> None:
        self._adc = self.board.analog_in(self.options.pin, self.options.bits)

    def read(self) -> Value:
        assert self._adc is not None, "setup() first"
        return float(self._adc.read() * self.options.scale + self.options.offset)
