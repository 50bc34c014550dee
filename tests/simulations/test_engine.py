"""The replica engine against hand computations (profile in helpers.PROFILE)."""

import math

import pytest
from helpers import PROFILE, Fixed, config, run, trace

from vllm_autoscaler.controller.profile import ProfileError, load_profile

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


def blocks(block_size: int, usable: int, watermark: float = 0.0):
    """PROFILE with a KV cache of `usable` blocks of `block_size` tokens (plus vLLM's null block)."""
    return PROFILE.model_copy(update={"kv_block_size": block_size, "kv_cache_tokens": (usable + 1) * block_size,
                                      "kv_watermark": watermark})  # fmt: skip


def test_admission_counts_whole_blocks_of_the_prompt():
    # 4 usable blocks of 100 tokens: 3 prompts of 101 tokens (303 tokens) need 2 blocks each,
    # so the third waits for the first to end. Steps: A's prefill 101 | A decodes, B's
    # prefill | B decodes, C's prefill: each request done one step after its first token.
    result = run(trace([0.0] * 3, [101] * 3, [2] * 3), config(K8S_ONLY), Fixed(1), profile=blocks(100, 4))
    first = 0.02 + 0.101
    then = 0.02 + 0.01 + 0.101
    assert result.ttft.tolist() == pytest.approx([first, first + then, first + 2 * then])
    # Counted in tokens, B and C would both have started at A's first token.
    roomy = run(trace([0.0] * 3, [101] * 3, [2] * 3), config(K8S_ONLY), Fixed(1), profile=blocks(1, 400))
    assert roomy.ttft[2] == pytest.approx(first + 0.02 + 0.01 + 0.202)


def test_a_sequence_crossing_into_a_block_none_is_free_for_preempts_the_newest():
    # 2 usable blocks of 10 tokens. A (prompt 5) runs alone, B (prompt 5) joins one step later;
    # each holds one block until its context passes 10 tokens. A gets there first, 4 decode
    # steps (batch 2: 0.04 s) after B's first token, in the middle of a pure-decode stretch:
    # B, admitted last, is preempted with 5 tokens generated, and recomputes them (10 tokens)
    # once A has ended (6 more steps alone, 0.03 s each).
    result = run(trace([0.0, 0.0], [5, 5], [12, 8]), config(K8S_ONLY), Fixed(1), profile=blocks(10, 2))
    a_first = 0.02 + 0.005
    b_first = a_first + 0.02 + 0.01 + 0.005
    preempted = b_first + 4 * 0.04
    a_end = preempted + 6 * 0.03
    b_end = a_end + (0.02 + 0.010) + 2 * 0.03  # recompute, then its last 2 tokens
    assert result.ttft.tolist() == pytest.approx([a_first, b_first])
    assert result.e2e.tolist() == pytest.approx([a_end, b_end])


def test_the_newest_request_is_preempted_even_in_the_middle_of_its_prefill():
    # 17 usable blocks of 100 tokens. A (prompt 199: 2 blocks) decodes; B (1500 tokens: 15
    # blocks, more than a step's budget of 1000) is admitted and prefills 999 tokens beside
    # A's decode step, after which A's context (201) needs a third block: B, admitted last,
    # is preempted (vLLM preempts the last of its running list), not A; its prefill starts
    # over once A is done.
    result = run(trace([0.0, 0.1], [199, 1500], [10, 5]), config(K8S_ONLY), Fixed(1), profile=blocks(100, 17))
    a_first = 0.02 + 0.199
    preempted = a_first + 0.02 + 0.01 + 0.999
    a_end = preempted + 8 * 0.03
    b_first = a_end + (0.02 + 0.999) + (0.02 + 0.501)
    assert result.ttft[0] == pytest.approx(a_first)
    assert result.e2e[0] == pytest.approx(a_end)
    assert result.ttft[1] == pytest.approx(b_first - 0.1)


def test_a_prompt_fits_the_usable_blocks_or_is_rejected():
    # 2 blocks of 100 tokens, one of them vLLM's null block: 100 tokens fit, 101 do not.
    result = run(trace([0.0, 1.0], [99, 101], [1, 1]), config(K8S_ONLY), Fixed(1), profile=blocks(100, 1))
    assert result.summary["completed"] == 1
    assert result.summary["failed"] == 1
    assert math.isnan(result.ttft[1])


def test_the_watermark_keeps_blocks_free_when_admitting_beside_running_requests():
    # 99 usable blocks of 10 tokens (100 in all, 10 of them the 10% watermark). A (900
    # tokens, 90 blocks) is admitted to the idle engine despite it; B (50 tokens) then finds
    # 8 blocks free, too few beside the watermark, and waits for A to end.
    tr = trace([0.0, 0.05], [899, 50], [20, 2])
    kept = run(tr, config(K8S_ONLY), Fixed(1), profile=blocks(10, 99, watermark=0.1))
    assert kept.ttft[1] > kept.e2e[0]
    without = run(tr, config(K8S_ONLY), Fixed(1), profile=blocks(10, 99))
    assert without.ttft[1] < without.e2e[0]


def test_profiles_without_block_fields_get_vllms_gpu_block_and_the_old_watermark(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("name: x\nmodel: m\ngpu: g\nsource: s\nkv_cache_tokens: 4096\n"
                    "prefill_per_token_s: 0.001\ndecode_base_s: 0.01\n")  # fmt: skip
    profile = load_profile(str(path))
    assert (profile.kv_block_size, profile.kv_watermark) == (16, 0.01)
    path.write_text(path.read_text() + "kv_block_size: 4096\n")
    with pytest.raises(ProfileError, match="fewer than 2 blocks"):
        load_profile(str(path))


def test_set_speed_scales_the_steps_from_then_on():
    from vllm_autoscaler.simulations.simulator import Simulation

    # One request (prompt 500, 11 tokens): TTFT 0.52 s, then 10 decode steps of 0.03 s; the
    # machine slows to half speed after 5 of them.
    cfg = config(K8S_ONLY)
    sim = Simulation(trace([0.0], [500], [11]), cfg, cfg.targets[0], PROFILE, Fixed(1))
    slow_at = 0.52 + 5 * 0.03

    def slow_down(now, _):
        for pool in sim.pools:
            for server in pool.servers:
                server.engine.set_speed(now, 2.0)

    sim.schedule(slow_at, slow_down, None)
    result = sim.run()
    assert result.ttft[0] == pytest.approx(0.52)
    assert result.e2e[0] == pytest.approx(slow_at + 5 * 0.06)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("block_size", [1, 16])
def test_a_block_due_within_float_rounding_never_stalls_the_clock(block_size):
    # Regression: at v = 260.9999999999999 a sequence was due its next block 2e-13 tokens
    # later, an instant that rounds to now: the event came back forever. Overloaded replicas
    # with full caches, as here, met it within two minutes.
    from vllm_autoscaler.config.loader import load_config
    from vllm_autoscaler.controller.policies import make_policy
    from vllm_autoscaler.simulations import generators

    cfg = load_config(overrides=["targets.0.modal=null", "targets.0.kubernetes.max_replicas=2"])
    profile = load_profile(cfg.targets[0].profile).model_copy(update={"kv_block_size": block_size})
    policy = make_policy("controller", cfg.targets[0], cfg.tick_seconds, profile)
    result = run(generators.poisson(rate_per_s=20, duration_s=120, seed=0), cfg, policy, profile)
    assert result.summary["completed"] + result.summary["failed"] == result.summary["requests"]
    assert result.summary["completed"] > 1000


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
