"""The direct-scrape metric source: every replica's /metrics, without a Prometheus.

Gauges are read as scraped. Rates and latency quantiles come from the change between this
scrape of a replica and the previous one (the window is the time between collections), the
way PromQL's rate() and histogram_quantile() would compute them over that window. A replica
that does not answer is not counted; if none answers, collect() raises.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from kubernetes import client as kube
from prometheus_client.parser import text_string_to_metric_families

from ..config.schema import DirectScrapeSource
from ..controller.types import Observation
from .common import QUANTILES, MetricsUnavailable, histogram_quantile, screened
from .vllm_names import ALL_SPELLINGS, Kind, Signal, absent_essentials, detect

TargetLister = Callable[[], Awaitable[list[str]]]

# vLLM's server closes a connection idle for VLLM_HTTP_TIMEOUT_KEEP_ALIVE (5 s by default). A
# client reusing it at that moment gets "Server disconnected", so ours let go of it sooner.
IDLE_CONNECTION_S = 2.0


@dataclass(frozen=True, slots=True)
class ReplicaMetrics:
    """The vLLM signals in one replica's /metrics, summed over label sets (engines, reasons)."""

    at: float
    gauges: dict[Signal, list[float]]  # one value per series
    counters: dict[Signal, float]
    histograms: dict[Signal, dict[float, float]]  # upper bound -> cumulative count


def parse_replica(text: str, at: float) -> ReplicaMetrics:
    """The signals in a /metrics text, under whichever names this vLLM release uses."""
    # A vLLM /metrics page has ~600 lines and we need ~60: dropping the rest before the
    # (pure-Python) parser makes a scrape ~10x cheaper.
    wanted = "\n".join(line for line in text.splitlines() if line.startswith(ALL_SPELLINGS))
    samples = defaultdict(list)
    for family in text_string_to_metric_families(wanted):
        for sample in family.samples:
            samples[sample.name].append(sample)
    parsed: dict[Kind, dict] = {kind: {} for kind in Kind}
    for signal, name in detect(samples.keys()).items():
        values = samples[name]
        if signal.kind is Kind.GAUGE:
            parsed[Kind.GAUGE][signal] = [s.value for s in values]
        elif signal.kind is Kind.COUNTER:
            parsed[Kind.COUNTER][signal] = sum(s.value for s in values)
        else:
            buckets: dict[float, float] = defaultdict(float)
            for s in values:
                buckets[float(s.labels["le"])] += s.value
            parsed[Kind.HISTOGRAM][signal] = dict(buckets)
    return ReplicaMetrics(at, parsed[Kind.GAUGE], parsed[Kind.COUNTER], parsed[Kind.HISTOGRAM])


def static_targets(targets: Iterable[str]) -> TargetLister:
    """Fixed replicas, as `host:port` or URLs (`/metrics` is added when there is no path)."""
    urls = [metrics_url(target) for target in targets]

    async def listed() -> list[str]:
        return urls

    return listed


def metrics_url(target: str) -> str:
    url = target if "://" in target else f"http://{target}"
    return url if urlsplit(url).path not in ("", "/") else url.rstrip("/") + "/metrics"


def endpoint_slice_targets(api: kube.ApiClient, service: str, namespace: str,
                           port: int) -> TargetLister:
    """The ready endpoints of a Service, from its EndpointSlices."""
    discovery = kube.DiscoveryV1Api(api)

    async def listed() -> list[str]:
        slices = await asyncio.to_thread(
            discovery.list_namespaced_endpoint_slice, namespace,
            label_selector=f"kubernetes.io/service-name={service}")
        return [
            metrics_url(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
            for endpoint_slice in slices.items
            for endpoint in endpoint_slice.endpoints or []
            # An unset `ready` means unknown, which the API says to treat as ready.
            if endpoint.conditions is None or endpoint.conditions.ready is not False
            for address in endpoint.addresses
        ]

    return listed


class ScrapeMetrics:
    """A MetricSource scraping each replica's /metrics concurrently (at most `max_concurrency`
    connections at a time)."""

    def __init__(self, targets: TargetLister, timeout_s: float, max_concurrency: int = 32,
                 clock: Callable[[], float] = time.time):
        self._targets = targets
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_concurrency = max_concurrency
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._previous: dict[str, ReplicaMetrics] = {}
        self.problems: list[str] = []  # what was wrong with the last collection

    @classmethod
    def from_config(cls, config: DirectScrapeSource, kube_api: kube.ApiClient | None = None,
                    clock: Callable[[], float] = time.time) -> ScrapeMetrics:
        if config.service is not None and config.targets:
            raise ValueError("metrics.direct: give either targets or service, not both")
        if config.service is None:
            return cls(static_targets(config.targets), config.timeout_seconds, clock=clock)
        if kube_api is None:
            raise ValueError(f"metrics.direct.service is {config.service!r}: discovering its "
                             "endpoints needs a Kubernetes API client")
        return cls(endpoint_slice_targets(kube_api, config.service, config.namespace, config.port),
                   config.timeout_seconds, clock=clock)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def collect(self) -> Observation:
        urls = await self._targets()
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_concurrency,
                                             keepalive_timeout=IDLE_CONNECTION_S)
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        results = await asyncio.gather(*(self._scrape(url) for url in urls))
        current = {url: r for url, r in zip(urls, results, strict=True)
                   if isinstance(r, ReplicaMetrics)}
        if urls and not current:
            failures = "; ".join(f"{url}: {reason}" for url, reason in zip(urls, results))
            raise MetricsUnavailable(f"no vLLM replica answered: {failures}")
        previous, self._previous = self._previous, current
        observation, rejected = self._observation(current, previous)
        unanswered = [f"replica {url} left out: {reason}" for url, reason in
                      zip(urls, results, strict=True) if url not in current]
        found = {s for r in current.values() for s in (*r.gauges, *r.counters)}
        absent = absent_essentials(found) if found else [
            f"no vLLM series in the /metrics of {', '.join(current)}"]
        self.problems = unanswered + (absent if current else []) + rejected
        return observation

    async def _scrape(self, url: str) -> ReplicaMetrics | str:
        """The replica's metrics, or why there are none."""
        try:
            async with self._session.get(url) as response:
                response.raise_for_status()
                text = await response.text()
            return parse_replica(text, self._clock())
        except (aiohttp.ClientError, TimeoutError) as error:
            return f"no answer ({type(error).__name__}: {error})"
        except ValueError as error:  # the parser's complaint
            return f"malformed /metrics ({error})"

    def _observation(self, current: dict[str, ReplicaMetrics],
                     previous: dict[str, ReplicaMetrics]) -> tuple[Observation, list[str]]:
        """The observation, and the values rejected as faults."""
        now = self._clock()
        replicas = list(current.values())
        windows = [(previous[url], r) for url, r in current.items() if url in previous]
        running, waiting, kv = (gauge_values(signal, replicas)
                                for signal in (Signal.RUNNING, Signal.WAITING, Signal.KV_USAGE))
        arrival_rate = window_rate(Signal.FINISHED, windows)
        values = {
            "running": sum(running) if running else None,
            "waiting": sum(waiting) if waiting else None,
            "kv_usage_mean": sum(kv) / len(kv) if kv else None,
            "kv_usage_max": max(kv, default=None),
            **window_quantiles("ttft", Signal.TTFT, windows),
            **window_quantiles("itl", Signal.ITL, windows),
            "ttft_buckets": window_histogram(Signal.TTFT, windows),
            "arrival_rate": arrival_rate,
            # The window is the time between two collections: its rate is already the rate
            # between the last two scrapes.
            "arrival_rate_instant": arrival_rate,
            "prompt_tokens_rate": window_rate(Signal.PROMPT_TOKENS, windows),
            "output_tokens_rate": window_rate(Signal.OUTPUT_TOKENS, windows),
            "replicas_reporting": len(replicas),
        }
        at = min((r.at for r in replicas), default=now)  # the oldest scrape in the figures
        samples, rejected = screened(values, at)
        return Observation(time=now, **samples), rejected


Window = tuple[ReplicaMetrics, ReplicaMetrics]  # one replica's previous and current scrape


def gauge_values(signal: Signal, replicas: list[ReplicaMetrics]) -> list[float]:
    return [v for r in replicas for v in r.gauges.get(signal, [])]


def window_rate(signal: Signal, windows: list[Window]) -> float | None:
    """Per-second increase of a counter, summed over the replicas (None if none has it)."""
    rates = [increase(before.counters[signal], after.counters[signal]) / (after.at - before.at)
             for before, after in windows
             if signal in before.counters and signal in after.counters]
    return sum(rates) if rates else None


def window_quantiles(prefix: str, signal: Signal, windows: list[Window]) -> dict[str, float]:
    """The Observation's quantile fields of a latency histogram over the windows."""
    buckets = window_histogram(signal, windows)
    return {f"{prefix}_{p}": histogram_quantile(q, buckets) for p, q in QUANTILES.items()}


def increase(before: float, after: float) -> float:
    """A counter's increase; a drop means the replica restarted and counted from zero."""
    return after - before if after >= before else after


def window_histogram(signal: Signal, windows: list[Window]) -> dict[float, float]:
    """The observations each bucket gained over the windows, summed by upper bound."""
    gained: dict[float, float] = defaultdict(float)
    for before, after in windows:
        old, new = before.histograms.get(signal, {}), after.histograms.get(signal, {})
        for bound in old.keys() & new.keys():
            gained[bound] += increase(old[bound], new[bound])
    return dict(gained)
