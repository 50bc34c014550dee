"""Prometheus histogram arithmetic, shared by the live metric sources and the simulator."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

# Bucket upper bounds of vLLM's latency histograms (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip


def bucket_index(bounds: Sequence[float], value: float) -> int:
    """Index of the first bucket whose upper bound holds `value` (len(bounds) = +Inf)."""
    return bisect_left(bounds, value)


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """PromQL's histogram_quantile over per-bucket (non-cumulative) counts.

    `counts` has one entry per bound plus the +Inf bucket. Linear interpolation inside the
    bucket, the lowest bucket starting at 0, and a quantile in +Inf answers the highest
    finite bound, as Prometheus does. None when there are no observations.
    """
    total = sum(counts)
    if total <= 0 or math.isnan(total):
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(counts):
        if seen + count >= rank and count > 0:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / count
        seen += count
    return bounds[-1]
