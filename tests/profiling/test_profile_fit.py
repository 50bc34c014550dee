"""The profile fit recovers a known profile from what a client of such a server measures; the
pieces around it (decoding state, metrics, bursts, fidelity figures) do what they say."""

from itertools import count
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from synthetic import ClosedLoopStage, sweep

from vllm_autoscaler.controller.profile import ReplicaProfile, load_profile, shipped_profiles
from vllm_autoscaler.simulations.engine import Replica
from vllm_autoscaler.simulations.fidelity import Burst, Run, compare, drained_at, overloaded_until
from vllm_autoscaler.simulations.loadgen import (
    Endpoint, EndpointError, first_token_held_back, fit_lengths, kv_cache_blocks, kv_cache_tokens,
)
from vllm_autoscaler.simulations.profiling import (
    Measurements, ProfilingError, Sweep, alone, build_profile, fit, life_state, others_in_flight,
    prefills_during_life, resolve_max_num_seqs, write_profile,
)  # fmt: skip
from vllm_autoscaler.simulations.traces import Trace

METRICS_0_32 = Path(__file__).parents[1] / "data" / "vllm_metrics_0.32.txt"


def known(**coefficients) -> ReplicaProfile:
    values = dict(prefill_per_token_s=1.1e-4, decode_base_s=2e-3, decode_per_seq_s=1e-4,
                  decode_per_context_token_s=1e-7) | coefficients  # fmt: skip
    return ReplicaProfile(name="known", model="m", gpu="g", source="test", max_num_seqs=8,
                          kv_cache_tokens=8192, **values)  # fmt: skip


def step(profile, batch, context) -> float:
    return profile.step_seconds(batch, context, 0)


@pytest.mark.parametrize("coefficients", [
    {},  # every term
    {"decode_per_context_token_s": 1e-6, "decode_per_seq_s": 0.0},  # context-bound decode
    {"decode_per_context_token_s": 0.0, "decode_per_seq_s": 3e-4},  # batch-bound decode
    {"prefill_per_token_s": 4e-4, "decode_base_s": 8e-3},
])  # fmt: skip
def test_the_fit_recovers_the_profile_that_made_the_measurements(coefficients):
    truth = known(**coefficients)
    fitted = fit(sweep(truth), 8).coefficients
    assert fitted["decode_base_s"] == pytest.approx(truth.decode_base_s, rel=0.05)
    assert fitted["prefill_per_token_s"] == pytest.approx(truth.prefill_per_token_s, rel=0.05)
    model = known(**fitted)
    # Batch and context cost are told apart only as far as the sweep spreads them: judge
    # the decode step they make together, over the batches and contexts the sweep ran.
    for batch in (1, 2, 4, 8):
        for context in (150 * batch, 400 * batch):
            assert step(model, batch, context) == pytest.approx(step(truth, batch, context), rel=0.05)


def test_a_dominant_decode_term_is_recovered_on_its_own():
    fitted = fit(sweep(known(decode_per_context_token_s=1e-6, decode_per_seq_s=0.0)), 8).coefficients
    assert fitted["decode_per_context_token_s"] == pytest.approx(1e-6, rel=0.1)
    fitted = fit(sweep(known(decode_per_context_token_s=0.0, decode_per_seq_s=3e-4)), 8).coefficients
    assert fitted["decode_per_seq_s"] == pytest.approx(3e-4, rel=0.1)


def test_the_engine_model_leaves_no_overhead_outside_it():
    fitted = fit(sweep(known()), 8)
    assert fitted.request_overhead_s < 1e-4
    assert fitted.ttft_error < 0.01 and fitted.step_error < 0.02


def test_a_per_request_overhead_outside_the_engine_is_told_apart_from_prefill():
    fitted = fit(sweep(known(), overhead_s=0.02), 8)
    assert fitted.request_overhead_s == pytest.approx(0.02, rel=0.1)
    assert fitted.coefficients["prefill_per_token_s"] == pytest.approx(1.1e-4, rel=0.1)
    assert fitted.coefficients["decode_base_s"] == pytest.approx(2e-3, rel=0.1)


def test_outliers_do_not_drag_the_fit():
    m = sweep(known())
    stalled = np.arange(len(m.sent)) % 10 == 0  # one request in ten stalled by a neighbour
    end = np.where(stalled, m.end + 0.05, m.end)
    fitted = fit(Measurements(m.sent, m.first, end, m.prompt, m.output, m.concurrency), 8).coefficients
    assert fitted["decode_base_s"] == pytest.approx(2e-3, rel=0.05)


def test_delays_of_a_busy_machine_do_not_tilt_the_prefill_cost():
    # Most idle requests delayed (60%), the longer ones the more (a shared machine stretches
    # what takes longer): the median line would tilt; the lower quartile stays on the truth.
    m = sweep(known(), overhead_s=0.01)
    rng = np.random.default_rng(1)
    idle = alone(m)
    delay = np.where(idle & (rng.random(len(m.sent)) < 0.6), rng.exponential(0.5, len(m.sent)), 0.0)
    stretched = delay * (m.first - m.sent)
    fitted = fit(Measurements(m.sent, m.first + stretched, m.end + stretched, m.prompt, m.output,
                              m.concurrency), 8)  # fmt: skip
    assert fitted.coefficients["prefill_per_token_s"] == pytest.approx(1.1e-4, rel=0.05)
    assert fitted.request_overhead_s == pytest.approx(0.01, rel=0.15)


def test_streams_held_back_by_the_front_end_do_not_drag_the_fit():
    m = sweep(known())
    held = (np.arange(len(m.sent)) % 8 == 0) & (m.output > 1)  # every token at once, at the end
    first = np.where(held, m.end - 1e-5, m.first)
    fitted = fit(Measurements(m.sent, first, m.end, m.prompt, m.output, m.concurrency), 8).coefficients
    assert fitted["decode_base_s"] == pytest.approx(2e-3, rel=0.05)
    assert fitted["prefill_per_token_s"] == pytest.approx(1.1e-4, rel=0.05)


def test_ttft_of_a_first_token_held_back_to_the_end_is_not_a_step():
    m = sweep(known())
    held = (m.concurrency == 1) & (np.arange(len(m.sent)) % 2 == 0) & (m.output > 1)
    first = np.where(held, m.end - 1e-5, m.first)
    measured = Measurements(m.sent, first, m.end, m.prompt, m.output, m.concurrency)
    assert first_token_held_back(m.sent, first, m.end, m.output).tolist() == held.tolist()
    fitted = fit(measured, 8)
    assert fitted.coefficients["prefill_per_token_s"] == pytest.approx(1.1e-4, rel=0.03)
    assert fitted.rows.is_ttft.sum() == (alone(m) & ~held).sum()


def test_the_engine_adds_the_overhead_to_latency_not_to_engine_time():
    def lone_request(**coefficients):
        stage = ClosedLoopStage(known(**coefficients), 1, 0.0, [(256, 16)], np.random.default_rng(0))
        ((sent, first, end, *_),) = stage.run(0.0)
        return first - sent, end - sent, stage.engine.busy_seconds(end)

    ttft, e2e, busy = lone_request()
    ttft_o, e2e_o, busy_o = lone_request(request_overhead_s=0.02)
    assert (ttft_o - ttft, e2e_o - e2e) == pytest.approx((0.02, 0.02))
    assert busy_o == pytest.approx(busy)


def test_shipped_profiles_load_without_an_overhead():
    for name in shipped_profiles():
        assert load_profile(name).request_overhead_s == 0.0


def test_life_state_integrates_batch_and_context_exactly():
    # Request 0 in flight over [0, 4] (prompt 10, 4 tokens: context 10 -> 14); request 1 over
    # [2, 4] (prompt 20, 2 tokens: 20 -> 22).
    m = Measurements(sent=np.array([0.0, 2.0]), first=np.array([1.0, 3.0]), end=np.array([4.0, 4.0]),
                     prompt=np.array([10.0, 20.0]), output=np.array([4.0, 2.0]), concurrency=np.ones(2))  # fmt: skip
    batch, context = life_state(m, max_num_seqs=8)
    assert batch == pytest.approx([1.5, 2.0])
    # Request 0 alone on [0, 2]: mean context 11; both on [2, 4]: 13 + 21 = 34.
    assert context == pytest.approx([(11 * 2 + 34 * 2) / 4, 34.0])
    # With room for one sequence, half of what is in flight runs.
    batch, context = life_state(m, max_num_seqs=1)
    assert batch == pytest.approx([1.0, 1.0])
    assert context == pytest.approx([(11 * 2 + 17 * 2) / 4, 17.0])
    assert prefills_during_life(m).tolist() == [20.0, 0.0]
    assert alone(m).tolist() == [True, False]
    assert others_in_flight(m, m.sent).tolist() == [0, 1]


def test_too_few_measurements_say_what_is_missing():
    m = sweep(known(), concurrency=(4,), duration_s=2.0)
    busy = m.concurrency == 4  # without the prefill stage no request had the server to itself
    with pytest.raises(ProfilingError, match="concurrency-1 stage"):
        fit(Measurements(*(getattr(m, c)[busy] for c in Measurements.COLUMNS)), 8)


def sweep_result(m: Measurements, max_running=8, max_waiting=3) -> Sweep:
    from datetime import datetime, timezone

    endpoint = Endpoint("http://127.0.0.1:1", "tiny", 1024, np.arange(3, 100))
    blocks, block_size = kv_cache_blocks(METRICS_0_32.read_text())
    return Sweep(endpoint, m, blocks * block_size, max_running, max_waiting,
                 0, 1.0, datetime(2026, 1, 1, tzinfo=timezone.utc), block_size)  # fmt: skip


def test_written_profile_loads_back_with_its_source(tmp_path):
    m = sweep(known())
    fitted = fit(m, 8)
    seqs = resolve_max_num_seqs(sweep_result(m), None)
    profile = build_profile(sweep_result(m), fitted, "cpu-tiny", "cpu", seqs, 2048)
    paths = write_profile(profile, fitted, sweep_result(m), tmp_path / "cpu-tiny.yaml")
    loaded = load_profile(str(tmp_path / "cpu-tiny.yaml"))
    assert loaded == profile
    assert loaded.kv_cache_tokens == 64 * 128  # num_gpu_blocks x block_size in the fixture
    assert loaded.kv_block_size == 128  # the CPU backend's block, as the server says
    assert loaded.kv_watermark == 0.0  # vLLM V1 keeps none unless told (--kv-watermark)
    assert loaded.max_num_seqs == 8  # requests waited while 8 ran of 16 in flight
    assert "measured by `vllm-autoscaler profile`" in loaded.source and "http://127.0.0.1:1" in loaded.source
    assert Measurements.load_csv(paths[1]).prompt.tolist() == m.prompt.tolist()
    assert paths[2].stat().st_size > 10_000  # the plot
    assert yaml.safe_load(paths[0].read_text())["name"] == "cpu-tiny"


def test_max_num_seqs_not_reached_falls_back_to_the_option_or_vllms_default():
    m = sweep(known(), concurrency=(1, 4))
    unsaturated = sweep_result(m, max_running=4, max_waiting=0)
    assert resolve_max_num_seqs(unsaturated, None) == (256, "max_num_seqs not reached: vLLM's default assumed")
    assert resolve_max_num_seqs(unsaturated, 32)[0] == 32
    assert resolve_max_num_seqs(sweep_result(m, max_running=2, max_waiting=1), None)[0] == 2


def test_kv_capacity_needs_the_cache_config_metric():
    assert kv_cache_tokens(METRICS_0_32.read_text()) == 8192
    assert kv_cache_blocks(METRICS_0_32.read_text()) == (64, 128)
    renamed = METRICS_0_32.read_text().replace("vllm:cache_config_info", "vllm_cache_config_info")
    assert kv_cache_tokens(renamed) == 8192
    with pytest.raises(EndpointError, match="no vllm:cache_config_info"):
        kv_cache_tokens("vllm:num_requests_running 1.0\n")
    broken = 'vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1.0\n'
    with pytest.raises(EndpointError, match="num_gpu_blocks"):
        kv_cache_tokens(broken)


def test_lengths_are_fitted_to_the_context():
    prompt, output = fit_lengths(np.array([100, 5000, 900]), np.array([10, 2000, 200]), 1024)
    assert output.tolist() == [10, 256, 200]
    assert prompt.tolist() == [100, 768, 824]
    assert (prompt + output <= 1024).all()


def test_a_burst_multiplies_the_rate_of_its_stretch_only():
    arrival = np.arange(0.0, 90.0, 0.5)
    trace = Trace(arrival, np.full(len(arrival), 100), np.full(len(arrival), 10))
    burst = Burst.parse("30:60:4")
    burst_trace = burst.apply(trace, seed=0)
    inside = burst.covers(burst_trace.arrival_s)
    assert inside.sum() == pytest.approx(4 * 60, rel=0.1)
    assert (~inside).sum() == 120
    assert np.all(np.diff(burst_trace.arrival_s) >= 0)
    for bad in ("30:60", "60:30:2", "a:b:c", "0:10:0"):
        with pytest.raises(ValueError, match="burst"):
            Burst.parse(bad)


def test_fidelity_errors_are_relative_to_the_live_figures():
    arrival = np.array([0.0, 1.0, 2.0, 3.0])
    output = np.array([10, 10, 10, 10])
    live = Run(arrival, arrival + 0.1, arrival + 1.0, output)
    simulated = Run(arrival, arrival + 0.2, arrival + 1.0, output)
    report = compare(live, simulated, Burst(2.0, 4.0, 2.0).covers(arrival))
    assert set(report) == {"all", "normal", "overloaded"}
    assert report["all"]["relative_error"]["ttft_p50"] == pytest.approx(1.0)
    assert report["all"]["relative_error"]["e2e_p95"] == pytest.approx(0.0)
    assert report["normal"]["live"]["requests"] == 2
    # 20 output tokens of the normal stretch between its first arrival (0) and last end (2).
    assert report["normal"]["live"]["throughput"] == pytest.approx(10.0)


def test_the_overloaded_stretch_lasts_until_every_queue_drained_after_the_burst():
    # A burst over [2, 4): live, the requests sent at 4.0 and 4.5 still wait behind it (the one
    # of 3.5 has its first token at 5.2); at 6.0 nobody waits any more.
    arrival = np.array([0.0, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 6.0, 7.0])
    first = np.array([0.1, 1.1, 2.1, 3.0, 4.0, 5.2, 5.5, 5.9, 6.1, 7.1])
    output = np.full(len(arrival), 10)
    live = Run(arrival, first, first + 1.0, output)
    burst = Burst(2.0, 4.0, 3.0)
    assert drained_at(live, burst.end_s) == 6.0
    assert overloaded_until([live, live], burst) == 6.0
    report = compare(live, live, burst.covers(arrival, overloaded_until([live], burst)))
    assert report["overloaded"]["live"]["requests"] == 6  # 2.0 to 4.5
    assert report["normal"]["live"]["requests"] == 4
    # A simulator slower to drain: there the one of 4.5 has its first token at 6.5, so the one
    # of 6.0 waits behind the burst and is not compared as a normal request; at 7.0 both drained.
    slower = Run(arrival, np.where(arrival == 4.5, 6.5, first), first + 1.0, output)
    assert overloaded_until([live, slower], burst) == 7.0
    # A failed request (no first token) is not waiting: without the one of 3.5, the queue has
    # drained at 4.0 (the one of 3.0 had its first token then). One that never drains: to the end.
    failed = first.copy()
    failed[5] = np.nan
    assert drained_at(Run(arrival, failed, failed + 1.0, output), 4.0) == 4.0
    assert drained_at(Run(arrival, arrival + 10.0, arrival + 11.0, output), 4.0) == float("inf")


def test_the_overheads_spread_is_measured_and_each_request_takes_its_own():
    # Front-end times spread evenly over 10-30 ms: the engine gives each request its own, and
    # the fit finds that spread again in the idle requests' TTFT.
    spread = tuple(np.linspace(0.01, 0.03, 21))
    profile = known(request_overhead_quantiles_s=spread)
    replica = Replica(SimpleNamespace(events=[], seq=count()), profile)
    own = [replica._overhead(req) for req in range(2000)]
    levels = [0.1, 0.5, 0.9]
    assert np.quantile(own, levels) == pytest.approx([0.012, 0.02, 0.028], abs=5e-4)
    q = fit(sweep(profile), 8).request_overhead_quantiles_s
    assert len(q) == 21 and list(q) == sorted(q)
    assert np.interp(levels, np.linspace(0, 1, 21), q) == pytest.approx([0.012, 0.02, 0.028], abs=0.002)


def test_overhead_quantiles_must_rise():
    with pytest.raises(ValueError, match="request_overhead_quantiles_s"):
        known(request_overhead_quantiles_s=(0.02, 0.01))
