"""The direct-scrape source against stand-in replicas serving real or generated /metrics."""

import asyncio
import math
from pathlib import Path

import pytest
from aiohttp import web
from emulators.vllm_exporter import exporters
from fixtures.realparts import free_port
from kubernetes import client as kube
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families
from vllm_autoscaler.config.schema import DirectScrapeSource
from vllm_autoscaler.metrics.common import MetricsUnavailable
from vllm_autoscaler.metrics.scrape import (
    IDLE_CONNECTION_S,
    ScrapeMetrics,
    endpoint_slice_targets,
    parse_replica,
    static_targets,
)
from vllm_autoscaler.metrics.vllm_names import Signal

DATA = Path(__file__).parent.parent / "data"
RECORDED = (DATA / "vllm_metrics_0.32.txt").read_text()
OLD_NAMES = (DATA / "vllm_metrics_old_names.txt").read_text()
TTFT_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 2.5)  # a subset of vLLM's


def replica_text(*, running: float = 0, waiting: float = 0, kv: float = 0.0,
                 ttfts: tuple[float, ...] = (), finished: int = 0) -> str:
    """A /metrics page written by prometheus_client, the library vLLM exports with."""
    registry = CollectorRegistry()
    labels = {"engine": "0", "model_name": "m"}

    def gauge(name: str, value: float) -> None:
        Gauge(name, name, list(labels), registry=registry).labels(**labels).set(value)

    gauge("vllm:num_requests_running", running)
    gauge("vllm:num_requests_waiting", waiting)
    gauge("vllm:kv_cache_usage_perc", kv)
    ttft = Histogram("vllm:time_to_first_token_seconds", "ttft", list(labels),
                     buckets=TTFT_BUCKETS, registry=registry).labels(**labels)
    for seconds in ttfts:
        ttft.observe(seconds)
    Counter("vllm:request_success", "finished", [*labels, "finished_reason"],
            registry=registry).labels(**labels, finished_reason="length").inc(finished)
    return generate_latest(registry).decode()


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def sample_value(text: str, name: str) -> float:
    """The value of the single sample `name` in an exposition text (read independently)."""
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name)


@pytest.mark.parametrize("text, kv_name", [
    (RECORDED, "vllm:kv_cache_usage_perc"), (OLD_NAMES, "vllm:gpu_cache_usage_perc")])
def test_parses_recorded_vllm_pages_of_both_naming_generations(text, kv_name):
    replica = parse_replica(text, at=5.0)
    assert replica.gauges[Signal.RUNNING] == [sample_value(text, "vllm:num_requests_running")]
    assert replica.gauges[Signal.WAITING] == [sample_value(text, "vllm:num_requests_waiting")]
    assert replica.gauges[Signal.KV_USAGE] == [sample_value(text, kv_name)]
    assert replica.histograms[Signal.TTFT][math.inf] == sample_value(
        text, "vllm:time_to_first_token_seconds_count")
    assert set(replica.histograms) == {Signal.TTFT, Signal.ITL}
    # request_success_total is split by finished_reason: the counter is their sum.
    finished = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "vllm:request_success_total")
    assert replica.counters[Signal.FINISHED] == finished > 0


async def test_rates_and_quantiles_come_from_the_change_between_scrapes():
    clock = Clock()
    async with exporters(replica_text(ttfts=(0.05,) * 4, finished=4)) as (replica,):
        source = ScrapeMetrics(static_targets([replica.url]), timeout_s=2, clock=clock)
        first = await source.collect()
        # The first collection has no window: rates and quantiles are unknown, not zero.
        assert first.arrival_rate.value is None and first.ttft_p50.value is None
        assert first.running.value == 0 and first.replicas_reporting.value == 1

        replica.text = replica_text(running=3, waiting=2, kv=0.4,
                                    ttfts=(0.05,) * 4 + (0.6,) * 4, finished=8)
        clock.now += 10
        second = await source.collect()
        await source.aclose()
    assert (second.running.value, second.waiting.value) == (3, 2)
    assert second.kv_usage_mean.value == second.kv_usage_max.value == 0.4
    assert second.arrival_rate.value == pytest.approx(4 / 10)
    # Only the 4 new observations, all in (0.5, 0.75]: rank 2 of 4 is halfway through.
    assert second.ttft_p50.value == pytest.approx(0.625)
    assert second.ttft_p99.value == pytest.approx(0.5 + 0.25 * 0.99)
    assert second.ttft_p50.at == clock.now and second.time == clock.now


async def test_an_idle_connection_is_let_go_before_vllm_would_close_it():
    # vLLM closes connections idle for 5 s; reusing one as it closes fails the request.
    assert IDLE_CONNECTION_S < 5
    async with exporters(RECORDED) as (replica,):
        source = ScrapeMetrics(static_targets([replica.url]), timeout_s=2)
        await source.collect()
        await source.collect()
        await asyncio.sleep(IDLE_CONNECTION_S + 0.5)
        await source.collect()
        await source.aclose()
    first, back_to_back, after_idle = replica.client_ports
    assert back_to_back == first and after_idle != first


async def test_a_quiet_window_has_no_quantiles_and_zero_rate():
    clock = Clock()
    async with exporters(replica_text(ttfts=(0.2,), finished=1)) as (replica,):
        source = ScrapeMetrics(static_targets([replica.url]), timeout_s=2, clock=clock)
        await source.collect()
        clock.now += 15
        quiet = await source.collect()
        await source.aclose()
    assert quiet.arrival_rate.value == 0.0  # measured: nothing finished
    assert quiet.ttft_p50.value is None  # no request: no latency to speak of


async def test_a_restarted_replica_counts_from_zero():
    clock = Clock()
    async with exporters(replica_text(ttfts=(0.2,) * 50, finished=50)) as (replica,):
        source = ScrapeMetrics(static_targets([replica.url]), timeout_s=2, clock=clock)
        await source.collect()
        replica.text = replica_text(ttfts=(0.3,) * 5, finished=5)
        clock.now += 10
        after_restart = await source.collect()
        await source.aclose()
    assert after_restart.arrival_rate.value == pytest.approx(5 / 10)
    assert 0.25 < after_restart.ttft_p50.value <= 0.5


async def test_an_unreachable_replica_is_not_counted_and_the_others_still_are():
    dead = f"127.0.0.1:{free_port()}"
    async with exporters(replica_text(running=4, kv=0.5), replica_text(running=2, kv=0.1)) as live:
        source = ScrapeMetrics(static_targets([live[0].url, dead, live[1].url]), timeout_s=2)
        observation = await source.collect()
        await source.aclose()
    assert observation.replicas_reporting.value == 2
    assert observation.running.value == 6
    # The dead replica is not averaged in as an empty cache.
    assert observation.kv_usage_mean.value == pytest.approx(0.3)


async def test_every_replica_unreachable_is_an_error_naming_them():
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    source = ScrapeMetrics(static_targets(dead), timeout_s=2)
    with pytest.raises(MetricsUnavailable, match="no vLLM replica answered") as error:
        await source.collect()
    await source.aclose()
    assert all(target in str(error.value) for target in dead)


async def test_a_malformed_page_is_not_counted_and_says_why():
    async with exporters("vllm:num_requests_running{engine=0 not a metric\n") as (bad,):
        source = ScrapeMetrics(static_targets([bad.url]), timeout_s=2)
        with pytest.raises(MetricsUnavailable, match="malformed /metrics"):
            await source.collect()
        await source.aclose()


async def test_a_page_without_vllm_series_reports_the_replica_with_values_missing():
    async with exporters("# nothing from vLLM here\nprocess_open_fds 7\n") as (other,):
        source = ScrapeMetrics(static_targets([other.url]), timeout_s=2)
        observation = await source.collect()
        await source.aclose()
    assert observation.replicas_reporting.value == 1
    assert observation.running.value is None and observation.kv_usage_max.value is None


async def test_static_targets_accept_host_port_and_urls():
    listed = static_targets(["10.0.0.1:8000", "http://a:1/", "https://b:2/custom"])
    assert await listed() == [
        "http://10.0.0.1:8000/metrics", "http://a:1/metrics", "https://b:2/custom"]


async def test_targets_from_the_ready_endpoints_of_a_service(unused_tcp_port):
    """EndpointSlice discovery through the real kubernetes client. The Kubernetes emulator
    has no EndpointSlices, so a stand-in answers the one list call, in the API's own JSON."""
    serialize = kube.ApiClient().sanitize_for_serialization

    def endpoint(address: str, ready: bool | None) -> kube.V1Endpoint:
        return kube.V1Endpoint(addresses=[address],
                               conditions=kube.V1EndpointConditions(ready=ready))

    slices = kube.V1EndpointSliceList(items=[
        kube.V1EndpointSlice(address_type="IPv4", metadata=kube.V1ObjectMeta(name="vllm-a"),
                             endpoints=[endpoint("10.0.0.1", True), endpoint("10.0.0.2", False),
                                        endpoint("10.0.0.3", None)]),
        kube.V1EndpointSlice(address_type="IPv6", metadata=kube.V1ObjectMeta(name="vllm-b"),
                             endpoints=[endpoint("fd00::4", True)]),
    ])
    asked = []

    async def list_slices(request: web.Request) -> web.Response:
        asked.append((request.match_info["namespace"], request.query.get("labelSelector")))
        return web.json_response(serialize(slices))

    app = web.Application()
    app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                       list_slices)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    configuration = kube.Configuration(host=f"http://127.0.0.1:{unused_tcp_port}")
    try:
        with kube.ApiClient(configuration) as api:
            targets = await endpoint_slice_targets(api, "vllm", "serving", 8000)()
    finally:
        await runner.cleanup()
    assert asked == [("serving", "kubernetes.io/service-name=vllm")]
    # 10.0.0.2 is not ready (starting or draining); an unset `ready` counts as ready.
    assert targets == ["http://10.0.0.1:8000/metrics", "http://10.0.0.3:8000/metrics",
                       "http://[fd00::4]:8000/metrics"]


def test_a_service_without_a_kubernetes_client_is_a_config_error():
    with pytest.raises(ValueError, match="metrics.direct.service"):
        ScrapeMetrics.from_config(DirectScrapeSource(service="vllm"))
