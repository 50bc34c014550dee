"""The engine's speed from vLLM's log of its steps, and the fidelity replay simulated at it."""

import numpy as np
import pytest
import yaml

from vllm_autoscaler.controller.profile import ReplicaProfile
from vllm_autoscaler.simulations.enginelog import EngineLogError, Speed, Steps, speed
from vllm_autoscaler.simulations.fidelity import Run, simulate_run
from vllm_autoscaler.simulations.traces import Trace

# As vLLM 0.32 logs them: its default format (time to the second, local) and enginelog's
# LOGGING_CONFIG (epoch seconds).
DEFAULT = (
    "(APIServer pid=27819) INFO 11-23 15:42:33 [loggers.py:199] Engine 000: Iteration(45031): 1 context "
    "requests, 397 context tokens, 0 generation requests, 0 generation tokens, iteration elapsed time: "
    "44.55 ms, CPU KV cache usage: 6.3%"
)
EPOCH = (
    "1795456413.3867 INFO Engine 000: Iteration(1): 0 context requests, 0 context tokens, 3 generation "
    "requests, 3 generation tokens, iteration elapsed time: 2.76 ms, CPU KV cache usage: 12.5%"
)


def test_steps_are_read_from_either_log_format_and_other_lines_are_skipped():
    from datetime import datetime

    steps = Steps.parse([DEFAULT, "(APIServer pid=1) INFO 11-23 15:42:33 [api_server.py:1] Started", EPOCH], year=2026)
    assert len(steps) == 2
    assert steps.time[0] == datetime(2026, 11, 23, 15, 42, 33).timestamp()
    assert steps.time[1] == pytest.approx(1795456413.3867)
    assert steps.prompt_tokens.tolist() == [397, 0]
    assert steps.decoding.tolist() == [0, 3]
    assert steps.kv_usage.tolist() == [6.3, 12.5]
    assert steps.elapsed_s.tolist() == pytest.approx([0.04455, 0.00276])


def synthetic_steps(start: float, seconds: float, slowdown, seed: int) -> Steps:
    """Steps of a made-up engine (2 ms + 0.15 ms per sequence + 0.01 ms per % of KV + 0.11 ms per
    prompt token), back to back from `start`, `slowdown(t)` times slower at time t."""
    rng = np.random.default_rng(seed)
    rows, t = [], start
    while t < start + seconds:
        decoding = rng.integers(0, 9)
        prompt = rng.choice([0, 0, 0, rng.integers(10, 1000)])
        kv = rng.uniform(0, 100)
        elapsed = (2e-3 + 1.5e-4 * decoding + 1e-5 * kv + 1.1e-4 * prompt) * slowdown(t)
        t += elapsed
        rows.append((t, prompt, decoding, kv, elapsed))
    return Steps(*np.array(rows).T)


def test_speed_is_the_replays_step_time_against_a_fit_of_the_steps_before_it_window_by_window():
    before = synthetic_steps(0.0, 60.0, lambda t: 1.0, seed=1)
    # The replay starts at 100 s; its second 10-20 runs 10% slow, the rest at the speed of before.
    replay = synthetic_steps(100.0, 30.0, lambda t: 1.1 if 110 <= t < 120 else 1.0, seed=2)
    measured = speed(before, replay, zero=100.0, duration_s=30.0)
    factors = dict(measured.windows)
    assert [factors[s] for s in (0.0, 5.0, 20.0, 25.0)] == pytest.approx([1.0] * 4, abs=0.01)
    assert [factors[s] for s in (10.0, 15.0)] == pytest.approx([1.1] * 2, abs=0.01)
    assert measured.overall == pytest.approx(1.033, abs=0.01)
    assert measured.reference_steps == len(before)


def test_speed_needs_steps_before_and_during_the_replay():
    before = synthetic_steps(0.0, 60.0, lambda t: 1.0, seed=1)
    with pytest.raises(EngineLogError, match="before the replay"):
        speed(before.where(before.time < 0.1), before, zero=100.0, duration_s=10.0)
    with pytest.raises(EngineLogError, match="during the replay"):
        speed(before, before, zero=100.0, duration_s=10.0)


def test_the_replay_simulated_at_a_measured_speed_takes_that_much_longer(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(ReplicaProfile(
        name="t", model="m", gpu="g", source="test", kv_cache_tokens=100_000, prefill_per_token_s=1e-3,
        decode_base_s=0.02, decode_per_seq_s=0.01).model_dump()))  # fmt: skip
    # Requests one at a time (no queueing): at half speed every latency doubles.
    arrival = np.arange(10) * 5.0
    trace = Trace(arrival, np.full(10, 300), np.full(10, 20))
    live = Run(arrival, arrival + 1.0, arrival + 2.0, trace.output_tokens)  # only its arrivals count
    normal = simulate_run(live, trace, profile, 0)
    same = simulate_run(live, trace, profile, 0, Speed([(0.0, 1.0)], 1.0, 1, 1))
    assert same.end.tolist() == normal.end.tolist()
    # Half speed from second 25 on: the requests that arrive then take twice as long.
    halved = simulate_run(live, trace, profile, 0, Speed([(0.0, 1.0), (25.0, 2.0)], 1.5, 1, 1))
    e2e, slow_e2e = normal.end - arrival, halved.end - arrival
    assert slow_e2e[:5].tolist() == pytest.approx(e2e[:5].tolist())
    assert slow_e2e[5:].tolist() == pytest.approx((2 * e2e[5:]).tolist())

