"""The Grove Starter Kit's analog sensors (`grove_temperature`, `grove_light`, `grove_rotary`)
against the fake mraa's analog inputs."""

from __future__ import annotations

import math
from typing import Any

import pytest

from agent.hardware.board import BoardError, MraaBoard
from agent.hardware.sensors.base import Sensor, SensorError
from agent.hardware.sensors.grove import (
    GroveLight,
    GroveLightOptions,
    GroveRotary,
    GroveRotaryOptions,
    GroveTemperature,
    GroveTemperatureOptions,
)
from agent.hardware.simulated import SimulatedBoard

B, R0 = 4275.0, 100000.0


def make(cls: Any, options: Any, board: Any) -> Sensor:
    sensor: Sensor = cls("s", options, board)
    sensor.setup()
    return sensor


def divider_fraction(celsius: float) -> float:
    """The other way round from the driver: the thermistor's resistance at a temperature from
    its B equation, R = R0 exp(B (1/T - 1/T25)), and the fraction of the supply the divider
    (thermistor to VCC, R0 to ground) puts on the pin."""
    resistance = R0 * math.exp(B * (1.0 / (celsius + 273.15) - 1.0 / 298.15))
    return R0 / (resistance + R0)


# --- temperature ---------------------------------------------------------------------------


def test_mid_scale_is_25_degc(mraa):
    # 0.5 of 1023 reads 512; R = R0 exactly would be 511.5, so 512 is a hair above 25 degC.
    mraa._set_analog(0, 0.5)
    sensor = make(GroveTemperature, GroveTemperatureOptions(pin=0), MraaBoard(mraa))
    assert sensor.read() == pytest.approx(25.0, abs=0.1)


@pytest.mark.parametrize("celsius, tolerance", [(-10.0, 0.15), (0.0, 0.15), (60.0, 0.2), (100.0, 0.65)])
def test_cold_and_hot_points_at_10_bits(mraa, celsius, tolerance):
    # The tolerance is one 10-bit count there: 0.14 degC at -10, 0.64 at 100 (the curve flattens).
    mraa._set_analog(1, divider_fraction(celsius))
    sensor = make(GroveTemperature, GroveTemperatureOptions(pin=1), MraaBoard(mraa))
    assert sensor.read() == pytest.approx(celsius, abs=tolerance)


@pytest.mark.parametrize("celsius", [-20.0, 25.0, 40.0])
def test_12_bits_reads_the_same_temperatures_finer(mraa, celsius):
    mraa._set_analog(2, divider_fraction(celsius))
    sensor = make(GroveTemperature, GroveTemperatureOptions(pin=2, bits=12), MraaBoard(mraa))
    # One 12-bit count is 0.054 degC at -20, 0.02 at 25.
    assert sensor.read() == pytest.approx(celsius, abs=0.06)


def test_b_and_r0_are_the_thermistors_for_the_v1_0_board(mraa):
    # v1.0: a 10 kOhm thermistor with B = 3975 (and a 10 kOhm divider resistor).
    resistance = 10000.0 * math.exp(3975.0 * (1.0 / 273.15 - 1.0 / 298.15))
    mraa._set_analog(3, 10000.0 / (resistance + 10000.0))
    sensor = make(GroveTemperature, GroveTemperatureOptions(pin=3, b=3975, r0=10000), MraaBoard(mraa))
    assert sensor.read() == pytest.approx(0.0, abs=0.3)


def test_zero_is_an_open_circuit(mraa):
    mraa._set_analog(0, 0.0)
    sensor = make(GroveTemperature, GroveTemperatureOptions(pin=0), MraaBoard(mraa))
    with pytest.raises(SensorError, match=r"A0 reads 0: open circuit"):
        sensor.read()


@pytest.mark.parametrize("bits, full", [(10, 1023), (12, 4095)])
def test_full_scale_is_a_short_circuit(mraa, bits, full):
    mraa._set_analog(0, 1.0)
    sensor = make(GroveTemperature, GroveTemperatureOptions(pin=0, bits=bits), MraaBoard(mraa))
    with pytest.raises(SensorError, match=r"A0 reads full scale \(%d\): short circuit" % full):
        sensor.read()


def test_a_failing_read_is_a_board_error(mraa):
    sensor = make(GroveTemperature, GroveTemperatureOptions(pin=4), MraaBoard(mraa))
    mraa._fail_reads("aio", 4)
    with pytest.raises(BoardError, match="analog pin A4: read failed"):
        sensor.read()


def test_a_pin_that_does_not_exist_is_a_board_error(mraa):
    with pytest.raises(BoardError, match="analog pin A7: cannot open"):
        make(GroveTemperature, GroveTemperatureOptions(pin=7), MraaBoard(mraa))


# --- rotary angle ----------------------------------------------------------------------------


@pytest.mark.parametrize("fraction, degrees", [(0.0, 0.0), (0.5, 512 * 300 / 1023), (1.0, 300.0)])
def test_rotary_degrees_at_the_ends_and_the_middle(mraa, fraction, degrees):
    mraa._set_analog(0, fraction)
    sensor = make(GroveRotary, GroveRotaryOptions(pin=0), MraaBoard(mraa))
    assert sensor.read() == pytest.approx(degrees)


@pytest.mark.parametrize("fraction, percent", [(0.0, 0.0), (0.5, 512 * 100 / 1023), (1.0, 100.0)])
def test_rotary_percent(mraa, fraction, percent):
    mraa._set_analog(0, fraction)
    sensor = make(GroveRotary, GroveRotaryOptions(pin=0, output="percent", bits=10), MraaBoard(mraa))
    assert sensor.read() == pytest.approx(percent)


def test_rotary_at_12_bits_reaches_the_same_end(mraa):
    mraa._set_analog(5, 1.0)
    assert make(GroveRotary, GroveRotaryOptions(pin=5, bits=12), MraaBoard(mraa)).read() == pytest.approx(300.0)


# --- light ------------------------------------------------------------------------------------


def test_light_reports_the_raw_count_by_default(mraa):
    mraa._set_analog(0, 0.25)
    sensor = make(GroveLight, GroveLightOptions(pin=0), MraaBoard(mraa))
    assert sensor.read() == round(0.25 * 1023)


@pytest.mark.parametrize("bits", [10, 12])
def test_light_percent_of_full_scale(mraa, bits):
    mraa._set_analog(0, 0.25)
    sensor = make(GroveLight, GroveLightOptions(pin=0, bits=bits, output="percent"), MraaBoard(mraa))
    assert sensor.read() == pytest.approx(25.0, abs=0.05)


# --- options and units ------------------------------------------------------------------------


@pytest.mark.parametrize("cls, options, key", [
    (GroveTemperature, GroveTemperatureOptions(pin=-1), "pin"),
    (GroveTemperature, GroveTemperatureOptions(pin=0, bits=8), "bits"),
    (GroveTemperature, GroveTemperatureOptions(pin=0, b=0), "b"),
    (GroveTemperature, GroveTemperatureOptions(pin=0, r0=-100000), "r0"),
    (GroveLight, GroveLightOptions(pin=0, output="lux"), "output"),
    (GroveRotary, GroveRotaryOptions(pin=0, output="radians"), "output"),
])
def test_options_the_drivers_refuse(cls, options, key):
    assert [k for k, _ in cls.check_options(options)] == [key]


def test_asking_for_lux_points_at_calibration():
    [(_, message)] = GroveLight.check_options(GroveLightOptions(pin=0, output="lux"))
    assert "calibration" in message


def test_units():
    assert GroveTemperature.default_unit(GroveTemperatureOptions(pin=0)) == "degC"
    assert GroveLight.default_unit(GroveLightOptions(pin=0)) is None
    assert GroveLight.default_unit(GroveLightOptions(pin=0, output="percent")) == "%"
    assert GroveRotary.default_unit(GroveRotaryOptions(pin=0)) == "deg"
    assert GroveRotary.default_unit(GroveRotaryOptions(pin=0, output="percent")) == "%"


# --- the simulated board ------------------------------------------------------------------------


def test_all_three_read_plausibly_on_the_simulated_board():
    board = SimulatedBoard()
    temperature = make(GroveTemperature, GroveTemperatureOptions(pin=0), board).read()
    light = make(GroveLight, GroveLightOptions(pin=1), board).read()
    angle = make(GroveRotary, GroveRotaryOptions(pin=2), board).read()
    assert -40.0 <= temperature <= 125.0  # the part's range
    assert isinstance(light, int) and 0 <= light <= 1023
    assert 0.0 <= angle <= 300.0
