"""The base-load estimate the hybrid plan puts on Kubernetes."""

from __future__ import annotations

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
