"""Policies see vLLM's metrics as Prometheus holds them: as of the last scrape."""

from __future__ import annotations

import pytest
from helpers import Fixed, config, run, trace


class Recording(Fixed):
    def __init__(self):
        super().__init__(1)
        self.seen: list[tuple[float, float, float | None]] = []  # (tick, measured at, running)

    def decide(self, observation, now):
        self.seen.append((now, observation.running.at, observation.running.value))
        return super().decide(observation, now)


def test_metrics_are_as_of_the_last_scrape_half_an_interval_off_the_ticks():
    policy = Recording()
    run(trace([0.0, 20.0], [100, 100], [5, 5]), config("simulation.scrape_interval_seconds=15"), policy)
    first, *later = policy.seen
    assert first[1] == first[0]  # the scrape taken at the start
    assert later and all(at == pytest.approx(tick - 7.5) for tick, at, _ in later)


def test_a_gauge_shows_what_was_running_at_the_scrape_not_at_the_tick():
    # A long request arrives at 16 s: scraped at 22.5 s, so first seen by the tick at 30 s.
    policy = Recording()
    run(trace([16.0], [100], [2000]), config("simulation.scrape_interval_seconds=15"), policy)
    running = {tick: value for tick, _, value in policy.seen}
    assert running[15.0] == 0 and running[30.0] == 1


def test_interval_zero_reads_metrics_at_the_tick():
    policy = Recording()
    run(trace([0.0, 20.0], [100, 100], [5, 5]), config("simulation.scrape_interval_seconds=0"), policy)
    assert all(at == tick for tick, at, _ in policy.seen)


class RecordingRates(Fixed):
    def __init__(self):
        super().__init__(1)
        self.rates: dict[float, tuple[float | None, float | None]] = {}  # tick: (window, instant)

    def decide(self, observation, now):
        self.rates[now] = (observation.arrival_rate.value, observation.arrival_rate_instant.value)
        return super().decide(observation, now)


def test_the_instant_rate_is_the_arrivals_between_the_last_two_scrapes():
    # 30 requests within one scrape interval (scrapes at 7.5 s, 22.5 s, 37.5 s, ...), and one
    # later that keeps the simulation ticking.
    policy = RecordingRates()
    arrivals = [16.0 + i / 30 for i in range(30)] + [80.0]
    run(trace(arrivals, [100] * 31, [5] * 31), config("simulation.scrape_interval_seconds=15"), policy)
    assert policy.rates[30.0][1] == pytest.approx(30 / 15)
    window, instant = policy.rates[45.0]
    assert instant == 0 and window > 0  # the window's mean still holds the burst
