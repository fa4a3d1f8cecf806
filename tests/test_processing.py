"""Calibration, filters, range and deadband: properties that hold for any input."""

from __future__ import annotations

import statistics
from typing import List, Optional, Tuple

from hypothesis import given
from hypothesis import strategies as st

from agent.sampling.processing import Calibration, Deadband, Filter, Pipeline, Processing
from agent.sampling.reading import GOOD, OUT_OF_RANGE

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def run(spec: Processing, values: List[float], step: float = 1.0) -> List[Optional[Tuple[float, str]]]:
    pipeline = Pipeline(spec)
    return [pipeline.process(v, i * step) for i, v in enumerate(values)]


@given(finite, finite, finite)
def test_linear_calibration_is_scale_times_value_plus_offset(x, scale, offset):
    assert Calibration(scale=scale, offset=offset).apply(x) == x * scale + offset


@given(st.lists(st.floats(min_value=-100, max_value=100), min_size=1, max_size=5),
       st.floats(min_value=-10, max_value=10))
def test_polynomial_calibration_evaluates_c0_plus_c1_x_plus_c2_x2(coefficients, x):
    expected = sum(c * x ** i for i, c in enumerate(coefficients))
    assert abs(Calibration(polynomial=tuple(coefficients)).apply(x) - expected) <= 1e-6 * max(1.0, abs(expected))


def test_a_polynomial_calibration_maps_a_thermistor_curve():
    # c0 + c1 x + c2 x^2 at x = 2: 1 + 2*2 + 0.5*4
    assert Calibration(polynomial=(1.0, 2.0, 0.5)).apply(2.0) == 7.0


@given(st.lists(finite, min_size=1, max_size=50), st.integers(min_value=1, max_value=10))
def test_median_filter_is_the_median_of_the_last_n_samples(values, n):
    out = run(Processing(filter=Filter("median", n)), values)
    for i, result in enumerate(out):
        assert result is not None
        assert result[0] == statistics.median(values[max(0, i - n + 1):i + 1])


@given(st.lists(finite, min_size=1, max_size=50), st.integers(min_value=1, max_value=10))
def test_mean_filter_is_the_mean_of_the_last_n_samples(values, n):
    out = run(Processing(filter=Filter("mean", n)), values)
    for i, result in enumerate(out):
        assert result is not None
        window = values[max(0, i - n + 1):i + 1]
        assert abs(result[0] - statistics.fmean(window)) <= 1e-9 * max(1.0, max(abs(v) for v in window))


def test_a_median_of_three_rejects_a_single_spike():
    out = run(Processing(filter=Filter("median", 3)), [20.0, 20.1, 500.0, 20.2, 20.1])
    values = [r[0] for r in out if r]
    assert values == [20.0, 20.05, 20.1, 20.2, 20.2]
    assert max(values) < 21


@given(st.lists(finite, min_size=1, max_size=50), finite, finite)
def test_range_marks_values_outside_and_never_drops_or_clamps_them(values, a, b):
    low, high = min(a, b), max(a, b)
    out = run(Processing(range=(low, high)), values)
    assert [r[0] for r in out if r] == values
    for value, result in zip(values, out):
        assert result is not None
        assert result[1] == (GOOD if low <= value <= high else OUT_OF_RANGE)


@given(st.lists(finite, min_size=1, max_size=80), st.floats(min_value=0, max_value=1000))
def test_deadband_publishes_exactly_the_moves_beyond_abs(values, band):
    out = run(Processing(deadband=Deadband(abs=band, max_silence=None)), values)
    last = None
    for value, result in zip(values, out):
        should = last is None or abs(value - last) > band
        assert (result is not None) == should
        if should:
            last = value


@given(st.lists(st.floats(min_value=1, max_value=1000), min_size=1, max_size=80),
       st.floats(min_value=0, max_value=50))
def test_deadband_in_percent_is_relative_to_the_last_published_value(values, pct):
    out = run(Processing(deadband=Deadband(pct=pct, max_silence=None)), values)
    last = None
    for value, result in zip(values, out):
        should = last is None or abs(value - last) > abs(last) * pct / 100
        assert (result is not None) == should
        if should:
            last = value


@given(st.integers(min_value=1, max_value=30), st.integers(min_value=2, max_value=200))
def test_a_steady_value_is_still_published_every_max_silence_seconds(silence, count):
    out = run(Processing(deadband=Deadband(abs=1.0, max_silence=float(silence))), [5.0] * count)
    published = [i for i, r in enumerate(out) if r is not None]
    assert published == list(range(0, count, silence))


def test_deadband_always_publishes_a_change_of_quality():
    spec = Processing(range=(0.0, 10.0), deadband=Deadband(abs=100.0, max_silence=None))
    out = run(spec, [9.9, 10.1, 9.9])
    assert out == [(9.9, GOOD), (10.1, OUT_OF_RANGE), (9.9, GOOD)]


def test_after_a_failure_the_next_value_is_published_whatever_the_deadband():
    pipeline = Pipeline(Processing(deadband=Deadband(abs=100.0, max_silence=None)))
    assert pipeline.process(1.0, 0.0) == (1.0, GOOD)
    assert pipeline.process(1.0, 1.0) is None
    pipeline.forget()
    assert pipeline.process(1.0, 2.0) == (1.0, GOOD)


def test_the_order_is_filter_then_calibration_then_range():
    spec = Processing(filter=Filter("mean", 2), calibration=Calibration(scale=10.0), range=(0.0, 15.0))
    out = run(spec, [1.0, 2.0])
    # mean(1, 2) = 1.5, x10 = 15: in range; calibrating first would not change it, filtering after would.
    assert out == [(10.0, GOOD), (15.0, GOOD)]
