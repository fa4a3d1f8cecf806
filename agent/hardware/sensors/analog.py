"""An analog input (mraa.Aio): the ADC count, volts, or a linear scaling of the count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from agent.hardware.board import AnalogIn
from agent.hardware.sensors.base import Sensor, Value

OUTPUTS = ("raw", "volts", "scaled")


@dataclass(frozen=True)
class AnalogOptions:
    pin: int
    # mraa reads the Edison's 12-bit ADC as 10 bits unless asked for 12.
    bits: int = 10
    # raw: the count; volts: count / full scale * vref; scaled: count * scale + offset.
    # Unset: scaled when scale or offset is given, else raw.
    output: Optional[str] = None
    # The Arduino breakout's reference: 5 V, or 3.3 V by its jumper.
    vref: float = 5.0
    scale: Optional[float] = None
    offset: Optional[float] = None

    @property
    def mode(self) -> str:
        if self.output is not None:
            return self.output
        return "scaled" if self.scale is not None or self.offset is not None else "raw"


class AnalogSensor(Sensor):
    blocking = False
    Options = AnalogOptions
    _adc: Optional[AnalogIn] = None

    @classmethod
    def check_options(cls, options: AnalogOptions) -> List[Tuple[str, str]]:
        problems = []
        # The Edison Arduino breakout has six analog inputs, A0-A5.
        if not 0 <= options.pin <= 5:
            problems.append(("pin", "%d is not an analog pin: the board has A0-A5 (pin: 0-5)" % options.pin))
        if options.bits not in (10, 12):
            problems.append(("bits", "%d is not supported: use 10 or 12" % options.bits))
        if options.output is not None and options.output not in OUTPUTS:
            problems.append(("output", "%r is not one of: %s" % (options.output, ", ".join(OUTPUTS))))
        elif options.mode != "scaled" and (options.scale is not None or options.offset is not None):
            problems.append(("output", "scale and offset apply to output: scaled; to map %s use calibration:"
                             % options.mode))
        if options.vref <= 0:
            problems.append(("vref", "%g V is not a reference voltage" % options.vref))
        return problems

    @classmethod
    def default_unit(cls, options: AnalogOptions) -> Optional[str]:
        return {"raw": "count", "volts": "V"}.get(options.mode)

    def setup(self) -> None:
        self._adc = self.board.analog_in(self.options.pin, self.options.bits)

    def read(self) -> Value:
        assert self._adc is not None, "setup() first"
        raw = self._adc.read()
        mode = self.options.mode
        if mode == "raw":
            return raw
        if mode == "volts":
            return float(raw / self._adc.max_raw * self.options.vref)
        scale = 1.0 if self.options.scale is None else self.options.scale
        offset = 0.0 if self.options.offset is None else self.options.offset
        return float(raw * scale + offset)
