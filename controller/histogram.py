"""Prometheus histogram arithmetic, shared by the live metric sources and the simulator."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from itertools import accumulate

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


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """The q-quantile of a histogram given as {upper bound: cumulative count}, as PromQL does.

    Linear interpolation inside the bucket the rank falls in (the lowest bucket starts at 0);
    a rank in the +Inf bucket gives the highest finite bound. NaN when there is nothing to
    estimate from: no +Inf bucket, fewer than two buckets, or no observations.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return math.nan
    # Counts may be non-monotonic when summed from scrapes taken at slightly different times.
    counts = list(accumulate((buckets[bound] for bound in bounds), max))
    total = counts[-1]
    if total == 0:
        return math.nan
    rank = q * total
    b = next(i for i, count in enumerate(counts) if count >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    lower, below = (bounds[b - 1], counts[b - 1]) if b > 0 else (0.0, 0.0)
    in_bucket = counts[b] - below
    if in_bucket == 0:  # only q == 0 over an empty lowest bucket
        return math.nan
    return lower + (bounds[b] - lower) * (rank - below) / in_bucket


def share_above(threshold: float, buckets: Mapping[float, float]) -> float | None:
    """Share of the observations above `threshold` (> 0) in a histogram of counts given as
    {upper bound: cumulative count}, +Inf included; None when it observed nothing.

    Exact at a bucket bound. Between two bounds, log-linear in the share above each (an
    exponential tail, as queueing delays have): PromQL's linear interpolation spreads a bucket
    evenly, and in the wide buckets above 1 s that counts several times the requests that
    were late. No observation above the upper bound counts as half of one.
    """
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf:
        return None
    counts = list(accumulate((buckets[bound] for bound in bounds), max))
    total = counts[-1]
    if total <= 0:
        return None
    b = bisect_left(bounds, threshold)
    lower, above_lower = (bounds[b - 1], total - counts[b - 1]) if b else (0.0, total)
    above_upper = total - counts[b]
    if bounds[b] == threshold:
        return above_upper / total
    if bounds[b] == math.inf or above_lower <= 0:  # nothing known past the last finite bound
        return above_lower / total
    position = (threshold - lower) / (bounds[b] - lower)
    return above_lower / total * (max(above_upper, min(0.5, above_lower)) / above_lower) ** position
