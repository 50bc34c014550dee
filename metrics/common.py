"""What both metric sources share: turning raw values into Samples, and histogram quantiles."""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import accumulate

from ..controller.types import Sample

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
