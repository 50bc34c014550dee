"""Values to Samples, and histogram quantiles computed the way Prometheus computes them."""

import math
from itertools import accumulate, pairwise

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
import numpy as np
from vllm_autoscaler.controller.histogram import TTFT_BUCKETS, share_above
from vllm_autoscaler.controller.types import Sample
from vllm_autoscaler.metrics.common import histogram_quantile, measured, screened

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


@st.composite
def histograms(draw) -> dict[float, int]:
    """Cumulative counts over 1-12 random finite bounds and +Inf, at least one observation."""
    bounds = draw(st.lists(st.floats(0.001, 100), min_size=1, max_size=12, unique=True).map(sorted))
    counts = draw(st.lists(st.integers(0, 50), min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    assume(sum(counts) > 0)
    return dict(zip([*bounds, INF], accumulate(counts)))


@given(histograms())
def test_quantiles_are_ordered_and_within_the_finite_bounds(cumulative):
    highest = max(b for b in cumulative if b < INF)
    estimates = [histogram_quantile(q, cumulative) for q in (0.5, 0.95, 0.99)]
    ulp = 1e-12 * highest  # interpolation rounds: at a bucket's top it may overshoot by one
    assert all(lower <= higher + ulp for lower, higher in pairwise(estimates))
    assert all(0 <= e <= highest + ulp for e in estimates)


def cumulative_counts(seen: np.ndarray) -> dict[float, float]:
    """vLLM's TTFT histogram of the values `seen`."""
    return {b: float(np.sum(seen <= b)) for b in (*TTFT_BUCKETS, INF)}


def test_the_share_above_a_bucket_bound_is_exact():
    buckets = {1.0: 90, 2.5: 99, 5.0: 100, INF: 100}
    assert share_above(1.0, buckets) == pytest.approx(0.10)
    assert share_above(2.5, buckets) == pytest.approx(0.01)


def test_between_two_bounds_the_share_falls_log_linearly():
    buckets = {1.0: 90, 2.5: 99, 5.0: 100, INF: 100}
    # A third of the way from 1 s (10% above) to 2.5 s (1% above): 10% x (1/10)^(2/3).
    assert share_above(1.5, buckets) == pytest.approx(0.1 * 0.1 ** (1 / 3))
    # Nothing above 5 s: counted as half a request of the 100.
    assert share_above(3.0, buckets) == pytest.approx(0.01 * 0.5 ** 0.2)
    assert share_above(6.0, buckets) == 0


def test_an_slo_inside_a_wide_bucket_reads_the_late_share_of_an_exponential_tail():
    # Queueing delays: 20,000 TTFTs of 0.2 s prefill plus an exponential wait of mean 0.3 s.
    seen = 0.2 + np.random.default_rng(7).exponential(0.3, 20_000)
    buckets = cumulative_counts(seen)
    for slo in (1.5, 2.0):  # inside (1, 2.5]
        late = np.mean(seen > slo)
        assert share_above(slo, buckets) == pytest.approx(late, rel=0.3)
        # What PromQL's linear interpolation implies: several times too many late requests.
        above_1, above_2_5 = np.mean(seen > 1.0), np.mean(seen > 2.5)
        linear = above_1 + (above_2_5 - above_1) * (slo - 1.0) / 1.5
        assert linear > 2.5 * late


@pytest.mark.parametrize("buckets", [{1.0: 0, INF: 0}, {1.0: 3, 2.5: 4}, {}])
def test_a_histogram_that_observed_nothing_or_has_no_inf_bucket_gives_no_share(buckets):
    assert share_above(1.0, buckets) is None


@given(histograms(), st.data())
def test_the_share_above_is_a_fraction_that_never_rises_with_the_threshold(cumulative, data):
    thresholds = sorted(data.draw(st.lists(st.floats(1e-4, 200), min_size=2, max_size=8)))
    shares = [share_above(t, cumulative) for t in thresholds]
    assert all(0 <= s <= 1 for s in shares)
    assert all(later <= earlier + 1e-12 for earlier, later in pairwise(shares))


@pytest.mark.parametrize("buckets, fault", [
    ({1.0: 3.0, 2.5: 4.0}, "no +Inf bucket"),
    ({1.0: -1.0, INF: 4.0}, "negative"),
    ({1.0: math.nan, INF: 4.0}, "not a number"),
])
def test_unusable_histogram_counts_are_missing_and_named(buckets, fault):
    samples, rejected = screened({"ttft_buckets": buckets}, at=5.0)
    assert samples["ttft_buckets"] == Sample(None, 5.0)
    assert len(rejected) == 1 and "ttft_buckets" in rejected[0] and fault in rejected[0]


def test_histogram_counts_become_sorted_bucket_pairs():
    samples, rejected = screened({"ttft_buckets": {INF: 4.0, 1.0: 3.0}}, at=5.0)
    assert samples["ttft_buckets"] == Sample(((1.0, 3.0), (INF, 4.0)), 5.0) and not rejected
