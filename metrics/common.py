"""What both metric sources share: turning raw values into Samples, and histogram quantiles."""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..controller.histogram import histogram_quantile
from ..controller.types import Buckets, Sample

__all__ = ["QUANTILES", "MetricsUnavailable", "histogram_quantile", "measured", "screened"]

# The quantiles an Observation carries, by field suffix (ttft_p50, itl_p99, ...).
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
# Above these a value is no measurement but a fault (a unit mix-up, a broken exporter): no
# vLLM fleet has a billion requests in flight or per second, and KV-cache use is a fraction.
ABSURD = 1e9
LIMITS = {"kv_usage_mean": 1.0, "kv_usage_max": 1.0}


class MetricsUnavailable(RuntimeError):
    """No metrics could be read at all (Prometheus down, every replica unreachable)."""


def measured(value: float | None, at: float, limit: float = math.inf) -> Sample:
    """A Sample of `value` measured at `at`; absent, NaN, infinite, negative or above `limit`
    is missing.

    vLLM's gauges, rates and latencies are never negative, and a NaN is what PromQL returns
    for a quantile of no observations: none of these may reach a policy as a number.
    """
    if value is None or not math.isfinite(value) or value < 0 or value > limit:
        return Sample.missing(at)
    return Sample(float(value), at)


def bucket_fault(buckets: Mapping[float, float]) -> str | None:
    """What makes a histogram's window counts unusable, if anything."""
    if math.inf not in buckets:
        return "no +Inf bucket"
    counts = list(buckets.values())
    if not all(math.isfinite(c) and 0 <= c < ABSURD for c in counts):
        return "a count that is negative, infinite or not a number"
    return None


def screened(values: Mapping[str, float | Mapping[float, float] | None],
             at: float) -> tuple[dict[str, Sample], list[str]]:
    """The Observation fields of `values` measured at `at` (a number, or a histogram's window
    counts by upper bound), and a line for each value that was rejected as a fault. Absent is
    not a fault, nor is a NaN latency quantile (PromQL's answer for a window without
    requests), nor a histogram that observed nothing."""
    samples, rejected = {}, []
    for field, value in values.items():
        if isinstance(value, Mapping):
            fault = bucket_fault(value) if value else None
            usable: Buckets | None = tuple(sorted(value.items())) if value and not fault else None
            samples[field] = Sample(usable, at)
            if fault:
                rejected.append(f"{field}: {fault}, read as missing")
            continue
        limit = LIMITS.get(field, ABSURD)
        samples[field] = measured(value, at, limit)
        if value is None or samples[field].value is not None:
            continue
        if math.isnan(value) and field.startswith(("ttft_", "itl_")):
            continue
        why = "not a number" if math.isnan(value) else "infinite" if math.isinf(value) else \
            "negative" if value < 0 else f"above {limit:g}"
        rejected.append(f"{field} = {value:g}: {why}, read as missing")
    return samples, rejected
