"""The replica engine against hand computations (profile in helpers.PROFILE)."""

import math

import pytest
from helpers import PROFILE, Fixed, config, run, trace

K8S_ONLY = "targets.0.modal.enabled=false"


def test_single_lightly_loaded_replica_matches_hand_computed_latency():
    # One request: prefill 500 tokens in one step, then 10 decode steps of batch 1.
    result = run(trace([1.0], [500], [11]), config(K8S_ONLY), Fixed(1))
    ttft = 0.02 + 0.001 * 500
    decode_step = 0.02 + 0.01 * 1
    assert result.ttft[0] == pytest.approx(ttft)
    assert result.e2e[0] == pytest.approx(ttft + 10 * decode_step)
    assert result.summary["itl_p50"] == pytest.approx(decode_step)


def test_chunked_prefill_splits_a_long_prompt_and_shares_the_budget_in_order():
    # Budget 1000 tokens/step. A (2500 tokens) starts a step alone; B arrives during it.
    # Steps: A 1000 | A 1000 | A 500 + B 300, after which both emit their first token.
    result = run(trace([0.5, 0.5], [2500, 300], [5, 5]), config(K8S_ONLY), Fixed(1))
    full_step = 0.02 + 0.001 * 1000
    last_step = 0.02 + 0.001 * (500 + 300)
    assert result.ttft[0] == pytest.approx(2 * full_step + last_step)
    assert result.ttft[1] == pytest.approx(result.ttft[0])


def test_max_num_seqs_makes_the_fifth_request_wait_for_a_free_slot():
    result = run(trace([0.0] * 5, [10] * 5, [50] * 5), config(K8S_ONLY), Fixed(1))
    first_four_done = max(result.e2e[:4])
    assert result.ttft[4] > first_four_done - 1e-9
    assert result.summary["completed"] == 5


def test_full_kv_cache_preempts_and_every_request_still_completes():
    small_kv = PROFILE.model_copy(update={"kv_cache_tokens": 400})
    tr = trace([0.0] * 4, [50] * 4, [120] * 4)  # 4 × 170 tokens > 400: preemption needed
    result = run(tr, config(K8S_ONLY), Fixed(1), profile=small_kv)
    assert result.summary["completed"] == 4
    assert result.summary["failed"] == 0
    # Recompute costs time: slower than the same load with room to spare.
    roomy = run(tr, config(K8S_ONLY), Fixed(1))
    assert max(result.e2e) > max(roomy.e2e)


def test_prompt_larger_than_the_kv_cache_is_failed_not_lost():
    small_kv = PROFILE.model_copy(update={"kv_cache_tokens": 400})
    result = run(trace([0.0, 0.1], [1000, 10], [5, 5]), config(K8S_ONLY), Fixed(1), small_kv)
    assert result.summary["failed"] == 1
    assert result.summary["completed"] == 1
    assert math.isnan(result.ttft[0])


@pytest.mark.timeout(120)
def test_a_long_run_never_stalls_on_float_rounding():
    # Regression: hours into a run the KV cache had room for 23.000000001 tokens for 23
    # sequences; the next event was due 1e-12 s later, which rounds to now, forever.
    from vllm_autoscaler.config.loader import load_config
    from vllm_autoscaler.simulations import generators
    from vllm_autoscaler.simulations.run import simulate
    from vllm_autoscaler.simulations.traces import slice_trace

    day = generators.diurnal(mean_rate=4, peak_to_trough=4, duration_s=86400, period_s=86400, seed=2)
    result = simulate(slice_trace(day, 0, 21600), load_config(), "controller")
    assert result.summary["completed"] + result.summary["failed"] == result.summary["requests"]
