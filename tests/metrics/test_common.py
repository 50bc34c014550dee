"""Values to Samples, and histogram quantiles computed the way Prometheus computes them."""

import math
from itertools import pairwise

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from vllm_autoscaler.controller.types import Sample
from vllm_autoscaler.metrics.common import histogram_quantile, measured

INF = math.inf


@pytest.mark.parametrize("bad", [None, math.nan, INF, -INF, -0.5])
def test_absent_nan_infinite_or_negative_is_missing_not_zero(bad):
    assert measured(bad, at=12.0) == Sample(None, 12.0)


def test_a_real_zero_stays_a_zero():
    assert measured(0, at=3.0) == Sample(0.0, 3.0)


def test_interpolates_linearly_inside_the_bucket():
    # 4 observations: 1 in (0, 0.1], 2 in (0.1, 0.5], 1 above. The median's rank is 2: the
    # first of the two in (0.1, 0.5] -> halfway through that bucket.
    buckets = {0.1: 1, 0.5: 3, INF: 4}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)
    # The lowest bucket starts at zero: rank 0.8 of its 1 -> 0.08.
    assert histogram_quantile(0.2, buckets) == pytest.approx(0.08)


def test_a_rank_in_the_inf_bucket_gives_the_highest_finite_bound():
    assert histogram_quantile(0.99, {0.1: 1, 0.5: 3, INF: 4}) == 0.5


@pytest.mark.parametrize("buckets", [
    {0.1: 0, 0.5: 0, INF: 0},  # no observations
    {0.1: 1, 0.5: 3},  # no +Inf bucket
    {INF: 4},  # a single bucket
    {},
])
def test_nothing_to_estimate_from_is_nan(buckets):
    assert math.isnan(histogram_quantile(0.5, buckets))


def test_non_monotonic_counts_are_evened_out_as_prometheus_does():
    # Summed from scrapes at slightly different times, a bucket may dip below the one before.
    assert histogram_quantile(0.5, {0.1: 2, 0.5: 1, 1.0: 4, INF: 4}) == pytest.approx(
        histogram_quantile(0.5, {0.1: 2, 0.5: 2, 1.0: 4, INF: 4}))


def test_quantile_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="within"):
        histogram_quantile(1.5, {1.0: 1, INF: 1})


bounds = st.lists(st.floats(0.001, 100), min_size=1, max_size=12, unique=True).map(sorted)


@given(bounds=bounds, data=st.data())
def test_quantiles_are_ordered_and_within_the_finite_bounds(bounds, data):
    counts = data.draw(st.lists(st.integers(0, 50), min_size=len(bounds) + 1,
                                max_size=len(bounds) + 1))
    cumulative = dict(zip([*bounds, INF], [sum(counts[:i + 1]) for i in range(len(counts))]))
    assume(cumulative[INF] > 0)
    estimates = [histogram_quantile(q, cumulative) for q in (0.5, 0.95, 0.99)]
    ulp = 1e-12 * bounds[-1]  # interpolation rounds: at a bucket's top it may overshoot by one
    assert all(lower <= higher + ulp for lower, higher in pairwise(estimates))
    assert all(0 <= e <= bounds[-1] + ulp for e in estimates)
