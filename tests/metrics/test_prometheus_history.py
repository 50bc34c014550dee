"""The Prometheus source's history: three hours of a vLLM replica's samples, imported into a
real Prometheus with promtool, read back by range queries as the observations a controller
running then would have made."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from emulators.vllm_history import OUTPUT, PROMPT, STEP_S, vllm_history
from fixtures.realparts import PrometheusServer
from vllm_autoscaler.config.schema import PrometheusSource
from vllm_autoscaler.controller.histogram import share_above
from vllm_autoscaler.metrics import prometheus
from vllm_autoscaler.metrics.prometheus import PrometheusMetrics

HOURS = 3
GAP = (95 * 60, 110 * 60)  # seconds before the end with no sample: nothing was scraped
LABELS = {"model_name": "tiny-llama", "instance": "10.0.0.7:8000"}


def rate_at(before: float) -> float:
    """2 req/s, then 6 req/s over the last hour."""
    return 6.0 if before < 3600 else 2.0


@pytest.fixture
def past(tmp_path) -> Iterator[tuple[PrometheusServer, float]]:
    """Prometheus holding the last three hours of one replica, and when they end."""
    end = int(time.time())
    server = PrometheusServer(None, tmp_path)
    server.backfill(vllm_history(end, HOURS * 3600, rate_at, LABELS, gaps=(GAP,)))
    server.start()
    yield server, end
    server.stop()


def source(url: str, model: str = "tiny-llama", clock: Callable[[], float] = time.time) -> PrometheusMetrics:
    return PrometheusMetrics(PrometheusSource(url=url, selector={"model_name": model}), clock)


def between(history, end: float, newest_before: float, oldest_before: float):
    return [o for o in history if end - oldest_before <= o.time <= end - newest_before]


async def test_history_is_what_a_controller_running_then_would_have_read(past, monkeypatch):
    server, end = past
    # Both reads at one moment: the range queries' grid starts `seconds` before now, so a
    # later read would be a shifted grid (seen in CI).
    now = time.time()
    history = await source(server.url, clock=lambda: now).history(HOURS * 3600, STEP_S)
    times = [o.time for o in history]
    assert all(b - a >= STEP_S for a, b in zip(times, times[1:]))  # oldest first, once each
    assert times[0] <= end - HOURS * 3600 + 2 * STEP_S and times[-1] >= end - 2 * STEP_S
    for newest, oldest, rate in ((GAP[1] + 120, 2.9 * 3600, 2.0), (120, 3500, 6.0)):
        part = between(history, end, newest, oldest)
        assert len(part) >= (oldest - newest) / STEP_S - 2
        for o in part:
            assert o.arrival_rate.value == pytest.approx(rate, rel=0.02)
            assert o.arrival_rate.at == o.time  # measured then, not now
            assert o.prompt_tokens_rate.value == pytest.approx(PROMPT * rate, rel=0.02)
            assert o.output_tokens_rate.value == pytest.approx(OUTPUT * rate, rel=0.02)
            assert 0.1 < o.ttft_p99.value <= 0.5
            assert share_above(0.5, dict(o.ttft_buckets.value)) == 0
            assert o.arrival_rate_instant.value == pytest.approx(rate, rel=0.02)
            assert o.running.value == 2 * rate
    # Nothing was scraped in the gap: missing there, never a zero rate.
    gap = between(history, end, GAP[0] + 60, GAP[1] - 60)
    assert gap and all(o.arrival_rate.value is None for o in gap)
    # More points than one range query may hold: read in pieces, the same observations.
    monkeypatch.setattr(prometheus, "MAX_POINTS_PER_QUERY", 50)
    assert await source(server.url, clock=lambda: now).history(HOURS * 3600, STEP_S) == history


async def test_a_tick_under_a_second_is_a_valid_step(past, monkeypatch):
    server, _ = past  # "0.5s" is no PromQL duration; the step is sent as a number of seconds
    now = time.time() // 1 - 0.4  # x.6 s: pieces end between whole seconds (the client rounds)
    history = await source(server.url, clock=lambda: now).history(60, 0.5)
    assert len(history) >= 119 and history[1].time - history[0].time == 0.5
    # Read in pieces of 25 s, the same points: none lost where one piece ends.
    monkeypatch.setattr(prometheus, "MAX_POINTS_PER_QUERY", 50)
    assert await source(server.url, clock=lambda: now).history(60, 0.5) == history


async def test_no_series_under_the_selector_is_no_history(past):
    server, _ = past
    assert await source(server.url, model="other").history(HOURS * 3600, STEP_S) == []

