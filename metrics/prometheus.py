"""The Prometheus metric source: PromQL over the target's vLLM series.

Each collection is two queries: which vLLM series exist under the selector (to pick the metric
names this vLLM release uses), then one query holding every signal, so that all of them are
evaluated at the same instant. Pool states are not known here (the daemon adds the actuators').
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from ..config.schema import PrometheusSource
from ..controller.types import Observation
from .common import QUANTILES, MetricsUnavailable, screened
from .vllm_names import ALL_SPELLINGS, Signal, absent_essentials, detect

_RATE = "sum(rate({series}[{window}]))"
_QUANTILE = "histogram_quantile({q}, sum by (le) (rate({{series}}[{{window}}])))"

# Observation field -> the signal it is computed from and its PromQL over `{series}`.
QUERIES: dict[str, tuple[Signal, str]] = {
    "running": (Signal.RUNNING, "sum({series})"),
    "waiting": (Signal.WAITING, "sum({series})"),
    "kv_usage_mean": (Signal.KV_USAGE, "avg({series})"),
    "kv_usage_max": (Signal.KV_USAGE, "max({series})"),
    **{f"ttft_{p}": (Signal.TTFT, _QUANTILE.format(q=q)) for p, q in QUANTILES.items()},
    **{f"itl_{p}": (Signal.ITL, _QUANTILE.format(q=q)) for p, q in QUANTILES.items()},
    "ttft_buckets": (Signal.TTFT, "sum by (le) (increase({series}[{window}]))"),
    "arrival_rate": (Signal.FINISHED, _RATE),
    "arrival_rate_instant": (Signal.FINISHED, "sum(irate({series}[{window}]))"),
    "prompt_tokens_rate": (Signal.PROMPT_TOKENS, _RATE),
    "output_tokens_rate": (Signal.OUTPUT_TOKENS, _RATE),
}
_MEASURED_AT = "measured_at"  # when the oldest of the selected gauges was scraped
# Prometheus refuses a range query of more than 11,000 points per series.
MAX_POINTS_PER_QUERY = 10_000

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def label_matchers(selector: Mapping[str, str]) -> str:
    """PromQL label matchers for the selector; each value is a regular expression, fully
    anchored as PromQL does (so a plain name matches itself)."""
    for label, pattern in selector.items():
        if not _LABEL_NAME.fullmatch(label):
            raise ValueError(f"metrics.prometheus.selector: {label!r} is not a label name")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"metrics.prometheus.selector.{label}: {pattern!r} is not a regular expression: "
                f"{error}") from None
    # A JSON string is a valid PromQL string literal (same escapes).
    return ", ".join(f"{label}=~{json.dumps(pattern)}" for label, pattern in selector.items())


def duration_seconds(duration: str) -> float:
    """Seconds in a Prometheus duration such as `1m` or `1m30s`."""
    parts = _DURATION_PART.findall(duration)
    if not parts or "".join(number + unit for number, unit in parts) != duration:
        raise ValueError(f"metrics.prometheus.rate_window: {duration!r} is not a Prometheus "
                         "duration (such as 30s, 1m, 1m30s)")
    return sum(int(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def put(values: dict[str, Any], labels: Mapping[str, str], value: str) -> None:
    """File one element of a combined query's answer under its field: a number, or for a
    histogram's buckets (labelled `le`) one count of the {upper bound: count} mapping."""
    field = labels["signal"]
    if "le" in labels:
        values.setdefault(field, {})[float(labels["le"])] = float(value)
    else:
        values[field] = float(value)


class PrometheusMetrics:
    """A MetricSource reading the vLLM series selected by `config.selector` from Prometheus."""

    def __init__(self, config: PrometheusSource, clock: Callable[[], float] = time.time):
        self.url = config.url
        self._matchers = label_matchers(config.selector)
        self._window = config.rate_window
        self._window_s = duration_seconds(config.rate_window)
        self._clock = clock
        self.problems: list[str] = []  # what was wrong with the last collection's values
        # No retries here: the controller's next tick is the retry, and a slow failure would
        # stall this one. POST, as the combined query is long.
        self._client = PrometheusConnect(
            url=config.url, disable_ssl=not config.verify_tls, timeout=config.timeout_seconds,
            retry=Retry(total=0), method="POST")

    async def collect(self) -> Observation:
        # prometheus-api-client is synchronous: keep it off the event loop.
        return await asyncio.to_thread(self._collect)

    def close(self) -> None:
        self._client.close()

    def _collect(self) -> Observation:
        names = self._present_names()
        results = self._query(self._signals_query(names))
        evaluated_at = float(results[0]["value"][0])  # the same for all: one query
        values: dict[str, Any] = {}
        for result in results:
            put(values, result["metric"], result["value"][1])
        # Ages as Prometheus measures them, placed on our clock: the two clocks need not agree.
        age = evaluated_at - values.pop(_MEASURED_AT, evaluated_at)
        nothing = (f"Prometheus has no vLLM series under the selector {{{self._matchers}}} "
                   "(are the replicas scraped, is the selector right?)")
        problems = absent_essentials(names) if names else [nothing]
        if age > self._window_s:
            values = {}  # the replicas stopped reporting: nothing here describes the window
            problems.append(f"the newest vLLM sample is {age:.0f} s old, older than the rate "
                            f"window ({self._window})")
        now = self._clock()
        samples, rejected = screened(
            {field: values.get(field) for field in [*QUERIES, "replicas_reporting"]}, now - age)
        self.problems = problems + rejected
        return Observation(time=now, **samples)

    async def history(self, seconds: float, step_s: float) -> list[Observation]:
        """The observations of the last `seconds`, one every `step_s`, oldest first, as
        Prometheus kept them: what a controller running then would have read. Times with no
        sample of a signal leave it missing (a gap is not a zero); pools are not in them."""
        return await asyncio.to_thread(self._history, seconds, step_s)

    def _history(self, seconds: float, step_s: float) -> list[Observation]:
        names = self._present_names()
        if not names:
            return []
        query = self._combined(self._expressions(names))
        values: defaultdict[float, dict[str, Any]] = defaultdict(dict)
        end = self._clock()
        start = end - seconds
        while start <= end:
            stop = min(start + (MAX_POINTS_PER_QUERY - 1) * step_s, end)
            for series in self._query_range(query, start, stop, step_s):
                for at, value in series["values"]:
                    put(values[float(at)], series["metric"], value)
            start = stop + step_s
        return [Observation(time=at, **screened({f: found.get(f) for f in QUERIES}, at)[0])
                for at, found in sorted(values.items())]

    def _series(self, names: str) -> str:
        """A selector of the named series (a `|`-separated regex) and the target's labels."""
        return "{" + ", ".join(filter(None, [f'__name__=~"{names}"', self._matchers])) + "}"

    def _present_names(self) -> dict[Signal, str]:
        """The series name of each signal this vLLM release exports under the selector."""
        return detect({r["metric"]["__name__"] for r in self._query(self._detection_query())})

    def _detection_query(self) -> str:
        return f"count by (__name__) ({self._series('|'.join(ALL_SPELLINGS))})"

    def _expressions(self, names: Mapping[Signal, str]) -> dict[str, str]:
        """The PromQL of each Observation field whose signal is among `names`."""
        return {
            field: promql.format(series=self._series(names[signal]), window=self._window)
            for field, (signal, promql) in QUERIES.items() if signal in names
        }

    def _signals_query(self, names: Mapping[Signal, str]) -> str:
        """Every signal as one instant vector, each element labelled `signal=<field>`."""
        expressions = self._expressions(names)
        # Counted by instance (not by series): a replica may run several engines.
        running = self._series("|".join(Signal.RUNNING.spellings))
        expressions["replicas_reporting"] = f"count(count by (instance) ({running})) or vector(0)"
        if Signal.RUNNING in names:
            expressions[_MEASURED_AT] = f"min(timestamp({self._series(names[Signal.RUNNING])}))"
        return self._combined(expressions)

    @staticmethod
    def _combined(expressions: Mapping[str, str]) -> str:
        """One query of every expression, each element labelled `signal=<field>`."""
        return " or ".join(f'label_replace({promql}, "signal", "{field}", "", "")'
                           for field, promql in expressions.items())

    def _query(self, promql: str) -> list[dict]:
        return self._ask(promql, self._client.custom_query, promql)

    def _query_range(self, promql: str, start: float, end: float, step_s: float) -> list[dict]:
        def at(seconds: float) -> datetime:
            return datetime.fromtimestamp(seconds, UTC)

        # The client rounds start and end to whole seconds, and its `params` override them:
        # exact times (Prometheus keeps milliseconds), so that the pieces of a long read go on
        # with one grid, whatever the step. A bare number of seconds for the step: a duration
        # such as "0.5s" is not valid PromQL.
        exact = {"start": f"{start:.3f}", "end": f"{end:.3f}"}
        return self._ask(promql, self._client.custom_query_range, promql, at(start), at(end),
                         f"{step_s:g}", exact)

    def _ask(self, promql: str, call: Callable[..., list[dict]], *args: object) -> list[dict]:
        try:
            return call(*args)
        except requests.RequestException as error:
            raise MetricsUnavailable(f"Prometheus at {self.url} is unreachable: {error}") from error
        except PrometheusApiClientException as error:
            raise MetricsUnavailable(
                f"Prometheus at {self.url} rejected the query {promql!r}: {error}") from error
