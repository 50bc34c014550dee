"""Synthetic traces: reproducible, with the rates and shapes they promise (simulations/generators.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vllm_autoscaler.simulations.generators import (
    GENERATORS,
    bursty,
    diurnal,
    poisson,
    spiky_daily,
    step,
)
from vllm_autoscaler.simulations.traces import load_trace

AZURE_CONV = Path(__file__).resolve().parents[1] / "data" / "traces" / "azure_conv_head.csv"
# Short, cheap parameters for each registered generator.
SMALL = {
    "poisson": {"rate_per_s": 5, "duration_s": 600},
    "diurnal": {"mean_rate": 5, "peak_to_trough": 3, "duration_s": 600, "period_s": 600},
    "step": {"rates": [1, 8, 2], "step_duration_s": 200},
    "bursty": {"base_rate_per_s": 2, "burst_multiplier": 5, "mean_burst_s": 60, "burst_fraction": 0.2, "duration_s": 600},
    "spiky": {"base_rate_per_s": 2, "peak_rate_per_s": 10, "duration_s": 3600, "mean_burst_s": 300},
}  # fmt: skip


def within(count: int, expected: float, sigmas: float = 5.0) -> bool:
    """A Poisson count within `sigmas` standard deviations of its mean."""
    return abs(count - expected) <= sigmas * np.sqrt(expected)


def test_every_registered_generator_has_small_parameters_here():
    assert set(GENERATORS) == set(SMALL)


@pytest.mark.parametrize("kind", SMALL)
def test_same_seed_same_trace_other_seed_other_trace(kind):
    make = GENERATORS[kind]
    a, b, c = make(seed=4, **SMALL[kind]), make(seed=4, **SMALL[kind]), make(seed=5, **SMALL[kind])
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    np.testing.assert_array_equal(a.output_tokens, b.output_tokens)
    assert len(a) != len(c) or not np.array_equal(a.arrival_s, c.arrival_s)


@pytest.mark.parametrize("kind", SMALL)
def test_traces_are_well_formed(kind):
    trace = GENERATORS[kind](seed=1, **SMALL[kind])
    assert len(trace) > 0 and trace.skipped_rows == 0
    assert trace.arrival_s.dtype == np.float64 and trace.prompt_tokens.dtype == np.int64
    assert np.all(np.diff(trace.arrival_s) >= 0) and trace.arrival_s[0] >= 0
    assert trace.prompt_tokens.min() >= 1 and trace.output_tokens.min() >= 1


@pytest.mark.parametrize("kind", GENERATORS)
def test_defaults_alone_give_a_trace(kind):
    """The CLI may call a generator with no parameters but the seed."""
    assert len(GENERATORS[kind](seed=0)) > 0


def test_poisson_rate_and_exponential_gaps():
    rate, duration = 20.0, 3600.0
    trace = poisson(rate, duration, seed=2)
    assert within(len(trace), rate * duration)
    assert trace.duration_s <= duration
    gaps = np.diff(trace.arrival_s)
    assert abs(gaps.std() / gaps.mean() - 1) < 0.03  # exponential: coefficient of variation 1


def test_diurnal_peak_to_trough_and_mean():
    mean, ratio, day = 5.0, 4.0, 86400.0
    trace = diurnal(mean, ratio, duration_s=day, seed=3)
    assert within(len(trace), mean * day)
    window = 1200.0  # 20 minutes around the trough (t = 0 and t = day) and the peak (day / 2)
    t = trace.arrival_s
    trough = np.sum(t < window / 2) + np.sum(t >= day - window / 2)
    peak = np.sum(np.abs(t - day / 2) < window / 2)
    # Expected counts from the rate formula, integrated over the windows.
    depth = (ratio - 1) / (ratio + 1)
    x = np.linspace(-window / 2, window / 2, 10001)
    expected_trough = np.trapezoid(mean * (1 - depth * np.cos(2 * np.pi * x / day)), x)
    expected_peak = np.trapezoid(mean * (1 + depth * np.cos(2 * np.pi * x / day)), x)
    assert within(trough, expected_trough) and within(peak, expected_peak)
    assert abs(peak / trough - ratio) < 0.35


def test_diurnal_trough_can_be_moved():
    day = 86400.0
    trace = diurnal(5.0, 5.0, duration_s=day, trough_at_s=day / 2, seed=1)
    t = trace.arrival_s
    rate_at_start = np.sum(t < 600) / 600
    rate_at_middle = np.sum(np.abs(t - day / 2) < 600) / 1200
    assert rate_at_start > 3 * rate_at_middle


def test_step_rates_per_step():
    rates, length = [2.0, 30.0, 0.0, 10.0], 300.0
    trace = step(rates, length, seed=6)
    counts = np.bincount((trace.arrival_s // length).astype(int), minlength=len(rates))
    assert len(counts) == len(rates)
    for count, rate in zip(counts, rates):
        assert within(count, rate * length) if rate else count == 0


def test_bursty_long_run_rate_and_burstiness():
    base, mult, burst_s, frac, duration = 0.2, 8.0, 300.0, 0.1, 40 * 86400.0
    trace = bursty(base, mult, burst_s, frac, duration, seed=7)
    expected = base * duration * (1 - frac + frac * mult)
    # Burst time varies from run to run much more than Poisson counts: a 12 % band.
    assert abs(len(trace) / expected - 1) < 0.12
    per_minute = np.bincount((trace.arrival_s // 60).astype(int))
    dispersion = per_minute.var() / per_minute.mean()
    assert dispersion > 3  # Poisson would give 1


def test_spiky_daily_peaks_fill_the_asked_hours():
    days, peak_hours = 20, 3.0
    base, peak = 0.1, 2.0
    trace = spiky_daily(base, peak, peak_hours, duration_s=days * 86400.0, mean_burst_s=1800, seed=8)
    per_minute = np.bincount((trace.arrival_s // 60).astype(int), minlength=days * 1440)
    busy_minutes = np.mean(per_minute > (base + peak) / 2 * 60)  # above the midpoint rate
    assert abs(busy_minutes * 24 - peak_hours) < 0.6


def test_lognormal_token_means():
    trace = poisson(50, 2000, seed=9, tokens={"prompt_mean": 2000, "prompt_sigma": 0.8,
                                              "output_mean": 100, "output_sigma": 1.2})  # fmt: skip
    assert abs(trace.prompt_tokens.mean() / 2000 - 1) < 0.03
    assert abs(trace.output_tokens.mean() / 100 - 1) < 0.05
    # sigma of the log, not of the lengths
    assert abs(np.log(trace.prompt_tokens).std() - 0.8) < 0.03


@pytest.mark.parametrize("source", [AZURE_CONV, str(AZURE_CONV), load_trace(AZURE_CONV)],
                         ids=["path", "str", "trace"])  # fmt: skip
def test_tokens_resampled_from_a_trace(source):
    real = load_trace(AZURE_CONV)
    trace = poisson(20, 600, seed=1, tokens=source)
    pairs = set(zip(real.prompt_tokens.tolist(), real.output_tokens.tolist()))
    drawn = list(zip(trace.prompt_tokens.tolist(), trace.output_tokens.tolist()))
    assert set(drawn) <= pairs
    assert len(set(drawn)) > len(pairs) // 2  # draws cover the trace, not a few rows


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("poisson", {"rate_per_s": 0}, "rate_per_s must be > 0, got 0"),
        ("diurnal", {"peak_to_trough": 0.5}, "peak_to_trough must be finite and >= 1"),
        ("step", {"rates": []}, "rates must be a non-empty list"),
        ("step", {"rates": [1, -2]}, "rates must be a non-empty list of rates >= 0"),
        ("bursty", {"burst_fraction": 1.0}, r"burst_fraction must be in \(0, 1\)"),
        ("bursty", {"burst_multiplier": 0.5}, "burst_multiplier must be >= 1"),
        ("spiky", {"base_rate_per_s": 5, "peak_rate_per_s": 1}, "need peak_rate_per_s >= base_rate_per_s"),
        ("poisson", {"tokens": {"prompt_mean": 0}}, "token mean must be >= 1"),
    ],
)
def test_bad_parameters_are_clear_errors(kind, params, message):
    with pytest.raises(ValueError, match=message):
        GENERATORS[kind](**params)
