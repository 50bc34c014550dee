"""What both metric sources share: turning raw values into Samples, and histogram quantiles."""

from __future__ import annotations

import math

from ..controller.histogram import histogram_quantile
from ..controller.types import Sample

__all__ = ["QUANTILES", "MetricsUnavailable", "histogram_quantile", "measured"]

# The quantiles an Observation carries, by field suffix (ttft_p50, itl_p99, ...).
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


class MetricsUnavailable(RuntimeError):
    """No metrics could be read at all (Prometheus down, every replica unreachable)."""


def measured(value: float | None, at: float) -> Sample:
    """A Sample of `value` measured at `at`; absent, NaN, infinite or negative is missing.

    vLLM's gauges, rates and latencies are never negative, and a NaN is what PromQL returns
    for a quantile of no observations: none of these may reach a policy as a number.
    """
    if value is None or not math.isfinite(value) or value < 0:
        return Sample.missing(at)
    return Sample(float(value), at)
