"""Both metric sources against a real CPU vLLM server under a real burst, and real Prometheus.

One burst is sent (module fixture `burst`) while both sources are polled; the tests then check
what each saw against each other and against what the client measured.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import aiohttp
import pytest
from fixtures.realparts import (
    MAX_NUM_SEQS,
    MODEL_NAME,
    Completion,
    PrometheusServer,
    VllmServer,
    send_completions,
)
from prometheus_api_client import PrometheusConnect
from prometheus_client.parser import text_string_to_metric_families
from vllm_autoscaler.config.schema import PrometheusSource
from vllm_autoscaler.controller.histogram import share_above
from vllm_autoscaler.controller.types import Observation
from vllm_autoscaler.metrics.common import (
    QUANTILES,
    MetricsUnavailable,
    histogram_quantile,
)
from vllm_autoscaler.metrics.prometheus import PrometheusMetrics
from vllm_autoscaler.metrics.scrape import ScrapeMetrics, parse_replica, static_targets
from vllm_autoscaler.metrics.vllm_names import Signal

pytestmark = pytest.mark.realparts

# Arriving 10/s, faster than vLLM serves 512-token requests (~3/s here), the requests queue
# inside vLLM, where its TTFT clock sees them, not in its HTTP front end, where it does not.
REQUESTS, MAX_TOKENS, SPACING_S = 32, 512, 0.1  # ~6-10 s: several scrapes
SELECTOR = {"model_name": MODEL_NAME}
SCRAPE_INTERVAL_S = 2.0  # the fixture's Prometheus
FRONT_END_S = 0.25  # HTTP and tokenizing ahead of vLLM's clock, on an idle machine


def prometheus_source(url: str, window_s: float, **selector: str) -> PrometheusMetrics:
    return PrometheusMetrics(PrometheusSource(
        url=url, selector=selector or SELECTOR, rate_window=f"{math.ceil(window_s)}s"))


@dataclass(frozen=True)
class Burst:
    completions: list[Completion]
    before: dict[str, Observation]  # by source: "prometheus", "scrape", "spanning"
    polled: dict[str, list[Observation]]  # during the burst
    after: dict[str, Observation]  # over a window holding the whole burst and nothing else
    window_s: float  # the Prometheus window of `after`
    ttft_bounds: list[float]  # the TTFT histogram's bucket upper bounds
    # Mean time a request spent outside vLLM's clock (HTTP, tokenizing, streaming): what the
    # client measured end to end minus what vLLM's e2e latency histogram counted.
    front_end_s: float
    # Prometheus's scrapes of the server over the window of `after`: the lowest `up` and the
    # longest scrape.
    scrapes_up: float
    slowest_scrape_s: float


async def record_burst(vllm: str, prometheus: str) -> Burst:
    polling = {"prometheus": prometheus_source(prometheus, 10),
               "scrape": ScrapeMetrics(static_targets([vllm]), timeout_s=5)}
    spanning = ScrapeMetrics(static_targets([vllm]), timeout_s=5)  # before and after only

    async def poll() -> dict[str, Observation]:
        sources = list(polling)
        return dict(zip(sources, await asyncio.gather(*(polling[s].collect() for s in sources))))

    spanning_before = await spanning.collect()
    e2e_before = e2e_latency_sum(await _metrics_text(vllm))
    # Quiet first, so that the window computed after the burst sees nothing older.
    await asyncio.sleep(3 * SCRAPE_INTERVAL_S)
    before = {**await poll(), "spanning": spanning_before}
    started = time.time()
    load = asyncio.create_task(send_completions(vllm, REQUESTS, MAX_TOKENS, SPACING_S))
    polled: dict[str, list[Observation]] = {source: [] for source in polling}
    while not load.done():
        for source, observation in (await poll()).items():
            polled[source].append(observation)
        await asyncio.sleep(0.25)
    completions = await load
    scrape_after = await spanning.collect()
    await asyncio.sleep(2.5 * SCRAPE_INTERVAL_S)  # Prometheus scrapes the end of the burst
    window_s = time.time() - started + 2 * SCRAPE_INTERVAL_S
    prometheus_after = await prometheus_source(prometheus, window_s).collect()
    scrapes = PrometheusConnect(prometheus)
    (up,) = scrapes.custom_query(f'min_over_time(up{{job="vllm"}}[{math.ceil(window_s)}s])')
    (slowest,) = scrapes.custom_query(
        f'max_over_time(scrape_duration_seconds{{job="vllm"}}[{math.ceil(window_s)}s])')
    await polling["scrape"].aclose()
    await spanning.aclose()
    text = await _metrics_text(vllm)
    bounds = sorted(parse_replica(text, 0).histograms[Signal.TTFT])
    front_end_s = (sum(c.duration for c in completions)
                   - (e2e_latency_sum(text) - e2e_before)) / len(completions)
    return Burst(completions, before, polled,
                 {"prometheus": prometheus_after, "scrape": scrape_after},
                 math.ceil(window_s), bounds, front_end_s, float(up["value"][1]),
                 float(slowest["value"][1]))


def most_inflation(window_s: float) -> float:
    """The most Prometheus's increase() over `window_s` multiplies a counter's rise by, with a
    sample every SCRAPE_INTERVAL_S and none missed: it stretches the span from the first to the
    last sample to the window's edges, by at most 1.1 sample intervals at each end
    (extrapolatedRate in promql/functions.go)."""
    return window_s / (window_s - 2 * 1.1 * SCRAPE_INTERVAL_S)


def e2e_latency_sum(text: str) -> float:
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "vllm:e2e_request_latency_seconds_sum")


async def _metrics_text(vllm: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{vllm}/metrics") as response:
        return await response.text()


@pytest.fixture(scope="module")
def burst(vllm_server: str, prometheus_server: PrometheusServer) -> Burst:
    return asyncio.run(record_burst(vllm_server, prometheus_server.url))


def test_prometheus_scraped_the_server_throughout_the_burst(burst: Burst):
    # What the Prometheus checks below rest on. A CPU vLLM server whose API process is starved
    # answers /metrics too late for a scrape, and Prometheus keeps the value from before the
    # burst (the fixture pins the server's processes so that it is not: see VllmServer).
    assert burst.scrapes_up == 1, "Prometheus missed scrapes of the server during the burst"
    assert burst.slowest_scrape_s < SCRAPE_INTERVAL_S / 2, burst.slowest_scrape_s


@pytest.mark.parametrize("source", ["prometheus", "scrape"])
def test_a_burst_raises_running_waiting_and_kv_usage(burst: Burst, source: str):
    before, polled = burst.before[source], burst.polled[source]
    assert (before.running.value, before.waiting.value, before.kv_usage_max.value) == (0, 0, 0)
    peak_running = max(o.running.value for o in polled if o.running.value is not None)
    assert 0 < peak_running <= MAX_NUM_SEQS
    assert max(o.waiting.value or 0 for o in polled) > 0  # more requests than max_num_seqs
    assert max(o.kv_usage_max.value or 0 for o in polled) > 0
    assert all(o.replicas_reporting.value == 1 for o in polled)


def client_quantile(completions: list[Completion], q: float) -> float:
    ttfts = sorted(c.ttft for c in completions)
    return ttfts[math.ceil(q * len(ttfts)) - 1]


@pytest.mark.parametrize("source", ["prometheus", "scrape"])
def test_ttft_quantiles_agree_with_what_the_client_measured(burst: Burst, source: str):
    after = burst.after[source]
    for p, q in QUANTILES.items():
        estimate = getattr(after, f"ttft_{p}").value
        # The estimate interpolates inside the bucket holding the true quantile. The client's
        # figure adds the time spent outside vLLM's clock: it lies at or above that bucket, and
        # above it by no more than that time (twice its mean, under uneven CPU contention).
        upper = next(b for b in burst.ttft_bounds if b >= estimate)
        lower = max((b for b in burst.ttft_bounds if b < upper), default=0.0)
        measured = client_quantile(burst.completions, q)
        allowance = FRONT_END_S + 2 * burst.front_end_s
        assert lower <= measured <= upper + allowance, (
            p, estimate, measured, lower, upper, burst.front_end_s)


@pytest.mark.parametrize("source", ["prometheus", "scrape"])
def test_the_ttft_histogram_holds_the_bursts_requests_by_latency(burst: Burst, source: str):
    buckets = dict(burst.after[source].ttft_buckets.value)
    # A scrape counts exactly; Prometheus's increase() extrapolates the rise to the window's
    # edges: never less than the rise, at most by its documented bound.
    exact = source == "scrape"
    if exact:
        assert buckets[math.inf] == REQUESTS
    else:
        assert REQUESTS <= buckets[math.inf] <= REQUESTS * most_inflation(burst.window_s), (
            buckets[math.inf], burst.window_s)
    # At each bound, the share of slower requests: the client's clock adds the time outside
    # vLLM's, so its share above the bound is an upper limit and above bound + that time a
    # lower one.
    tolerance = 0 if exact else 0.1
    allowance = FRONT_END_S + 2 * burst.front_end_s
    ttfts = [c.ttft for c in burst.completions]
    for bound in burst.ttft_bounds:
        share = share_above(bound, buckets)
        most = sum(t > bound for t in ttfts) / len(ttfts)
        least = sum(t > bound + allowance for t in ttfts) / len(ttfts)
        assert least - tolerance <= share <= most + tolerance, (bound, share, least, most)


def test_the_instant_rate_is_the_rate_between_the_last_two_scrapes(burst: Burst):
    # Prometheus: irate. Once two scrapes have passed since the burst, nothing finished
    # between them, while the window's rate still holds the burst.
    after = burst.after["prometheus"]
    assert after.arrival_rate_instant.value == 0 and after.arrival_rate.value > 0
    assert max(o.arrival_rate_instant.value or 0 for o in burst.polled["prometheus"]) > 0
    # The direct scrape's window is the time between two collections: one and the same rate.
    assert all(o.arrival_rate_instant == o.arrival_rate for o in burst.polled["scrape"])


def test_the_scrape_window_holds_exactly_the_burst(burst: Burst):
    before, after = burst.before["spanning"], burst.after["scrape"]
    assert before.arrival_rate.value is None  # a first collection has no window
    window = after.arrival_rate.at - before.arrival_rate.at
    assert after.arrival_rate.value * window == pytest.approx(REQUESTS)
    assert after.output_tokens_rate.value * window == pytest.approx(REQUESTS * MAX_TOKENS)


def test_the_two_sources_agree(burst: Burst):
    prometheus, scrape = burst.after["prometheus"], burst.after["scrape"]
    for field in [f"{h}_{p}" for h in ("ttft", "itl") for p in QUANTILES]:
        assert getattr(prometheus, field).value == pytest.approx(
            getattr(scrape, field).value, rel=0.15), field
    # Rates over different windows differ; their ratio is a property of the burst.
    for source in (prometheus, scrape):
        ratio = source.output_tokens_rate.value / source.arrival_rate.value
        assert ratio == pytest.approx(MAX_TOKENS, rel=0.05)
    assert prometheus.replicas_reporting.value == scrape.replicas_reporting.value == 1


def test_our_histogram_quantile_is_prometheus_histogram_quantile(
        burst: Burst, prometheus_server: PrometheusServer):
    client = PrometheusConnect(prometheus_server.url)
    at = {"time": str(time.time())}
    buckets_query = ("sum by (le) (rate(vllm:time_to_first_token_seconds_bucket"
                     f'{{model_name="{MODEL_NAME}"}}[{burst.window_s + 60}s]))')
    buckets = {float(r["metric"]["le"]): float(r["value"][1])
               for r in client.custom_query(buckets_query, params=at)}
    assert buckets[math.inf] > 0
    for q in (0.1, *QUANTILES.values()):
        (theirs,) = client.custom_query(f"histogram_quantile({q}, {buckets_query})", params=at)
        assert histogram_quantile(q, buckets) == pytest.approx(float(theirs["value"][1]))


async def test_the_selector_picks_the_series(prometheus_server: PrometheusServer):
    matched = await prometheus_source(prometheus_server.url, 30, model_name="tiny-.*").collect()
    assert matched.replicas_reporting.value == 1 and matched.running.value is not None
    other = await prometheus_source(prometheus_server.url, 30, model_name="other").collect()
    assert other.replicas_reporting.value == 0  # Prometheus answered: no replica has it
    assert other.running.value is None and other.kv_usage_mean.value is None


async def test_a_stopped_prometheus_is_a_clear_error(prometheus_server: PrometheusServer):
    source = prometheus_source(prometheus_server.url, 30)
    prometheus_server.stop()
    try:
        with pytest.raises(MetricsUnavailable, match="unreachable") as error:
            await source.collect()
        assert prometheus_server.url in str(error.value)
    finally:
        prometheus_server.start()
    assert (await source.collect()).running.value is not None  # back once it is


async def test_a_killed_vllm_server_is_not_counted_as_zeros(
        vllm_server: str, own_vllm_server: VllmServer):
    both = ScrapeMetrics(static_targets([vllm_server, own_vllm_server.url]), timeout_s=5)
    assert (await both.collect()).replicas_reporting.value == 2
    own_vllm_server.kill()
    load = asyncio.create_task(send_completions(vllm_server, 4 * MAX_NUM_SEQS, max_tokens=256))
    observations = []
    while not load.done():
        observations.append(await both.collect())
        await asyncio.sleep(0.2)
    await both.aclose()
    assert all(o.replicas_reporting.value == 1 for o in observations)
    busy = [o for o in observations if o.running.value]
    assert busy, [(o.time, o.running.value, o.replicas_reporting.value) for o in observations]
    # The dead replica is left out, not averaged in as an empty KV cache.
    assert all(o.kv_usage_mean.value == o.kv_usage_max.value for o in observations)
    assert max(o.kv_usage_max.value for o in busy) > 0

    only_dead = ScrapeMetrics(static_targets([own_vllm_server.url]), timeout_s=5)
    with pytest.raises(MetricsUnavailable, match="no vLLM replica answered") as error:
        await only_dead.collect()
    await only_dead.aclose()
    assert own_vllm_server.url in str(error.value)
