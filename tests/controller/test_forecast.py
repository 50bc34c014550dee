"""The arrival-rate forecast: its trend over a pod's lead time and the base-load estimate."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_autoscaler.controller.forecast import RateForecaster


def history(rates, tick_s=15.0) -> RateForecaster:
    forecaster = RateForecaster(tick_s, 0.3, 0.05, 0.1, 2.0)
    for i, rate in enumerate(rates):
        forecaster.update(rate, i * tick_s)
    return forecaster


def test_the_quantile_covers_only_the_window():
    f = history([100.0] * 40 + [1.0, 2.0, 3.0, 4.0])  # the last 4 ticks: t = 600..645
    assert f.recent_quantile(645, 50, 0.0) == 1.0
    assert f.recent_quantile(645, 50, 0.99) == 4.0


def test_a_held_peak_counts_as_present_for_the_hold_time():
    # A 10 req/s blip every 4th tick: present a quarter of the time, but with a 45-s hold a
    # container kept warm for 45 s after each blip is busy all the time.
    f = history([10.0, 1.0, 1.0, 1.0] * 20)
    now = 79 * 15.0
    assert f.recent_quantile(now, 600, 0.5) == 1.0
    assert f.recent_quantile(now, 600, 0.5, hold_s=45) == 10.0
    assert f.recent_quantile(now, 600, 0.5, hold_s=30) == pytest.approx(10.0)  # 3 of 4 ticks


def test_no_history_is_zero():
    assert history([]).recent_quantile(0, 600, 0.3, hold_s=60) == 0.0


def measured(rates, tick_s=15.0, window_s=60.0, seed=0) -> list[float]:
    """What a Prometheus rate over `window_s` reads each tick for Poisson arrivals at `rates`."""
    counts = np.random.default_rng(seed).poisson(np.repeat(rates, tick_s))  # per second
    ends = np.arange(tick_s, len(counts) + 1, tick_s, dtype=int)
    return [counts[max(end - int(window_s), 0) : end].sum() / min(window_s, end) for end in ends]


def test_on_a_flat_load_the_trend_adds_no_pods_worth_over_a_pods_lead():
    # 5 req/s for an hour: Holt's raw slope wanders ~0.5 req/s over 8 minutes (a pod's lead,
    # about half a replica), the significant trend stays within a tenth of that.
    f = RateForecaster(15.0, 0.3, 0.05, 0.1, 1.0)
    raw, gated = [], []
    for i, rate in enumerate(measured([5.0] * 240)):
        f.update(rate, i * 15.0)
        if i >= 40:
            raw.append(abs(f.trend) * 495)
            gated.append(abs(f.significant_trend()) * 495)
    assert np.percentile(raw, 90) > 0.4
    assert np.percentile(gated, 90) < 0.05


def test_a_ramp_keeps_more_than_half_its_trend():
    # 2 -> 20 req/s over 20 minutes: 0.015 req/s per second.
    f = RateForecaster(15.0, 0.3, 0.05, 0.1, 1.0)
    for i, rate in enumerate(measured(np.linspace(2.0, 20.0, 80))):
        f.update(rate, i * 15.0)
    assert f.significant_trend() > 0.5 * f.trend > 0.5 * 0.012


@pytest.mark.parametrize("season_s", [86400.0, 604800.0])
def test_the_season_brings_back_the_rise_one_season_ago_and_zero_turns_it_off(season_s):
    # 1 req/s, but 10 req/s for an hour starting one season before `onset`.
    tick_s, onset, lead = 60.0, season_s + 36000.0, 600.0

    def rate(t: float) -> float:
        return 10.0 if onset - season_s <= t < onset - season_s + 3600 else 1.0

    seasonal, plain = (RateForecaster(tick_s, 0.3, 0.05, 0.1, 1.0, s, s + 3600) for s in (season_s, 0.0))
    now = onset - lead
    for t in np.arange(0.0, now, tick_s):
        seasonal.update(rate(t), t)
        plain.update(rate(t), t)
    for forecaster in (seasonal, plain):
        forecaster.update(2.0, now)  # a jump in the last tick: the latest is not the level
    assert seasonal.forecast(now, lead).point == pytest.approx(10.0)
    assert plain.forecast(now, lead).point == pytest.approx(plain.level + plain.significant_trend() * lead)
    assert plain.forecast(now, lead).point < 2.0
    assert seasonal.forecast(now, lead / 2).point < 2.0  # not yet: a season ago it was 1 req/s
