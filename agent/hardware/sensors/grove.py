"""The analog sensors of Seeed's Grove Starter Kit: the Temperature Sensor (an NTC thermistor),
the Light Sensor and the Rotary Angle Sensor, each on one of the Edison breakout's A0-A5.

All three are ratiometric: the module's output is a fraction of its supply, and the reading is
right only while the Grove supply and the ADC's reference are the same voltage (5 V: the Base
Shield's VCC switch and the breakout's IOREF jumper both at 5 V).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

from agent.hardware.board import AnalogIn
from agent.hardware.sensors.base import Sensor, SensorError, Value

# Kelvin at 25 degC, the temperature a thermistor's R0 and B are specified at.
T25 = 298.15
KELVIN = 273.15
# The Rotary Angle Sensor's potentiometer turns through 300 degrees end to end (Seeed's wiki and
# sample code: FULL_ANGLE 300; UPM's GroveRotary: m_max_angle = 300).
ROTARY_FULL_ANGLE = 300.0


def _pin_and_bits(pin: int, bits: int) -> List[Tuple[str, str]]:
    problems = []
    if not 0 <= pin <= 5:
        problems.append(("pin", "%d is not an analog pin: the board has A0-A5 (pin: 0-5)" % pin))
    if bits not in (10, 12):
        problems.append(("bits", "%d is not supported: use 10 or 12" % bits))
    return problems


class _GroveAnalog(Sensor):
    """The plumbing the three share: one analog input, opened in setup."""

    blocking = False

    _adc: Optional[AnalogIn] = None
    # Tells a simulated board what to put on the pin.
    part: str = ""

    def setup(self) -> None:
        self._adc = self.board.analog_in(self.options.pin, self.options.bits, part=self.part)

    def _raw(self) -> Tuple[int, int]:
        """The count and the full-scale count."""
        if self._adc is None:
            raise SensorError("analog pin A%d is not set up" % self.options.pin)
        return self._adc.read(), self._adc.max_raw


@dataclass(frozen=True)
class GroveTemperatureOptions:
    pin: int
    bits: int = 10
    # The thermistor's B constant. v1.1/v1.2 (NCP18WF104F03RC): 4275, Seeed's value; v1.0: 3975.
    b: float = 4275.0
    # The thermistor's resistance at 25 degC, in ohms; Seeed's formula takes the divider's fixed
    # resistor to be the same value (it is, on each revision). v1.1/v1.2: 100000; v1.0: 10000.
    r0: float = 100000.0


class GroveTemperature(_GroveAnalog):
    """Grove - Temperature Sensor: degC from the thermistor's divider, by its B equation."""

    Options = GroveTemperatureOptions
    options: GroveTemperatureOptions
    part = "grove_temperature"

    @classmethod
    def check_options(cls, options: GroveTemperatureOptions) -> List[Tuple[str, str]]:
        problems = _pin_and_bits(options.pin, options.bits)
        if not (math.isfinite(options.b) and options.b > 0):
            problems.append(("b", "%r must be a positive number of kelvin (4275 for v1.1/v1.2)" % options.b))
        if not (math.isfinite(options.r0) and options.r0 > 0):
            problems.append(("r0", "%r must be a positive number of ohms (100000 for v1.1/v1.2)" % options.r0))
        return problems

    @classmethod
    def default_unit(cls, options: GroveTemperatureOptions) -> Optional[str]:
        return "degC"

    def read(self) -> Value:
        raw, full = self._raw()
        # The thermistor is on the supply side of the divider, the fixed R0 on the ground side:
        # 0 V means no current through the thermistor, full scale means none across it.
        if raw <= 0:
            raise SensorError("A%d reads 0: open circuit (sensor unplugged, or its thermistor broken)"
                              % self.options.pin)
        if raw >= full:
            raise SensorError("A%d reads full scale (%d): short circuit across the thermistor"
                              % (self.options.pin, full))
        # Seeed's v1.2 sample code (its wiki's software section) and Intel's UPM GroveTemp
        # (src/grove/grovetemp.cxx): R = R0 * (max / raw - 1); T = 1 / (ln(R / R0) / B + 1 / 298.15)
        # - 273.15, the thermistor's B equation solved for T.
        resistance = self.options.r0 * (full / raw - 1.0)
        kelvin = 1.0 / (math.log(resistance / self.options.r0) / self.options.b + 1.0 / T25)
        return kelvin - KELVIN


OUTPUTS_LIGHT = ("raw", "percent")
OUTPUTS_ROTARY = ("degrees", "percent")


@dataclass(frozen=True)
class GroveLightOptions:
    pin: int
    bits: int = 10
    # raw: the ADC count; percent: of full scale. Not lux: see docs/sensors.md.
    output: str = "raw"


class GroveLight(_GroveAnalog):
    """Grove - Light Sensor: brighter reads higher. A relative level, never lux: the light
    dependent resistor's curve differs from part to part, so lux needs a calibration."""

    Options = GroveLightOptions
    part = "grove_light"
    options: GroveLightOptions

    @classmethod
    def check_options(cls, options: GroveLightOptions) -> List[Tuple[str, str]]:
        problems = _pin_and_bits(options.pin, options.bits)
        if options.output not in OUTPUTS_LIGHT:
            problems.append(("output", "%r is not one of: %s (lux needs a calibration against a "
                                       "lux meter: see calibration)" % (options.output, ", ".join(OUTPUTS_LIGHT))))
        return problems

    @classmethod
    def default_unit(cls, options: GroveLightOptions) -> Optional[str]:
        return "%" if options.output == "percent" else None

    def read(self) -> Value:
        raw, full = self._raw()
        if self.options.output == "percent":
            return raw * 100.0 / full
        return raw


@dataclass(frozen=True)
class GroveRotaryOptions:
    pin: int
    bits: int = 10
    # degrees: 0-300, the potentiometer's travel; percent: of full travel.
    output: str = "degrees"


class GroveRotary(_GroveAnalog):
    """Grove - Rotary Angle Sensor: a linear potentiometer across the supply, its wiper the output."""

    Options = GroveRotaryOptions
    part = "grove_rotary"
    options: GroveRotaryOptions

    @classmethod
    def check_options(cls, options: GroveRotaryOptions) -> List[Tuple[str, str]]:
        problems = _pin_and_bits(options.pin, options.bits)
        if options.output not in OUTPUTS_ROTARY:
            problems.append(("output", "%r is not one of: %s" % (options.output, ", ".join(OUTPUTS_ROTARY))))
        return problems

    @classmethod
    def default_unit(cls, options: GroveRotaryOptions) -> Optional[str]:
        return "%" if options.output == "percent" else "deg"

    def read(self) -> Value:
        raw, full = self._raw()
        fraction = raw / full
        if self.options.output == "percent":
            return fraction * 100.0
        return fraction * ROTARY_FULL_ANGLE
