"""The mypyc-compiled engine (simulations/native.py): bit-identical to engine.py, and never
used when built from another engine.py. In CI a missing build is a failure, not a skip."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import structlog
from helpers import PROFILE, config, run

from vllm_autoscaler.controller.policies import make_policy
from vllm_autoscaler.simulations import build_native, engine, native, pools
from vllm_autoscaler.simulations.traces import Trace

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def compiled() -> type:
    replica = native.compiled_replica(build_native.source_sha256())
    if replica is None:
        message = "no compiled engine built from this engine.py: run `make native`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return replica


def busy_trace(seed: int = 7) -> Trace:
    """Ten minutes alternating a heavy and a light load, prompts from a few tokens to more than
    a small replica's KV cache: chunked prefill, preemption, rejections, scaling both ways."""
    rng = np.random.default_rng(seed)
    rates = np.repeat([12.0, 2.0, 12.0, 1.0, 10.0], 120)  # per second, for each second
    counts = rng.poisson(rates)
    arrivals = np.sort(np.concatenate([s + rng.random(c) for s, c in enumerate(counts)]))
    n = len(arrivals)
    prompts = np.minimum(rng.lognormal(6.0, 1.2, n), 12_000).astype(np.int64) + 1
    outputs = np.minimum(rng.lognormal(4.5, 1.0, n), 1500).astype(np.int64) + 1
    return Trace(arrivals, prompts, outputs, name="busy")


SMALL = PROFILE.model_copy(update={
    "max_num_seqs": 16, "kv_cache_tokens": 6000, "max_num_batched_tokens": 512,
    "prefill_per_token_s": 1e-4, "decode_base_s": 0.01, "decode_per_seq_s": 5e-4,
    "decode_per_context_token_s": 1e-6, "request_overhead_s": 0.004,
    "request_overhead_quantiles_s": (0.002, 0.003, 0.004, 0.006, 0.012),
})  # fmt: skip


def simulate_with(replica: type, policy: str, monkeypatch: pytest.MonkeyPatch):
    cfg = config("targets.0.kubernetes.max_replicas=6", "targets.0.modal.max_containers=4",
                 "targets.0.kubernetes.drain_seconds=5", "simulation.request_timeout_seconds=120")
    with monkeypatch.context() as m:
        m.setattr(pools, "Replica", replica)  # where servers make their engines
        policy = make_policy(policy, cfg.targets[0], cfg.tick_seconds, SMALL)
        return run(busy_trace(), cfg, policy, SMALL)


@pytest.mark.parametrize("policy", ["controller", "hpa"])
def test_compiled_engine_gives_bit_identical_results(compiled, policy, monkeypatch):
    preemptions = 0
    relieve = engine.Replica._relieve_kv

    def counting(self):
        nonlocal preemptions
        preemptions += 1
        relieve(self)

    monkeypatch.setattr(engine.Replica, "_relieve_kv", counting)  # the pure engine only
    pure = simulate_with(engine.Replica, policy, monkeypatch)
    fast = simulate_with(compiled, policy, monkeypatch)

    # The run is as busy as meant: it chunks prompts, preempts, rejects and completes most.
    failures = pure.summary["failures_by_reason"]
    assert (busy_trace().prompt_tokens > SMALL.max_num_batched_tokens).sum() > 100
    assert preemptions > 10
    assert failures.get("prompt larger than the KV cache", 0) > 0
    assert pure.summary["completed"] > 0.9 * pure.summary["requests"]
    # Every request's latencies and every figure of the summary and timeline, to the bit.
    assert np.array_equal(pure.ttft, fast.ttft, equal_nan=True)
    assert np.array_equal(pure.e2e, fast.e2e, equal_nan=True)
    for result in (pure, fast):
        del result.summary["sim_wall_seconds"]
    assert repr(pure.summary) == repr(fast.summary)  # repr: exact floats, NaN equal to NaN
    assert repr(vars(pure.timeline)) == repr(vars(fast.timeline))


def test_the_simulator_runs_the_compiled_engine_when_built(compiled):
    assert native.COMPILED and native.Replica is compiled
    assert pools.Replica is compiled
    assert native.pick_replica() is compiled


def test_a_compiled_engine_built_from_other_source_is_not_used(compiled, monkeypatch, tmp_path):
    # A build whose hash does not match (engine.py edited since) ...
    module = __import__(build_native.COMPILED_MODULE, fromlist=["Replica"])
    monkeypatch.setattr(module, "SOURCE_SHA256", "0" * 64)
    with structlog.testing.capture_logs() as logs:
        assert native.pick_replica() is engine.Replica
    assert "pure Python" in logs[0]["event"] and "make native" in logs[0]["event"]
    monkeypatch.undo()
    # ... and an edited engine.py against the real build.
    edited = tmp_path / "engine.py"
    shutil.copyfile(build_native.ENGINE_SOURCE, edited)
    with edited.open("a") as f:
        f.write("# an edit\n")
    assert native.pick_replica(edited) is engine.Replica
    assert native.pick_replica(build_native.ENGINE_SOURCE) is compiled


def test_without_a_matching_build_the_pure_engine_is_used(tmp_path):
    edited = tmp_path / "engine.py"
    edited.write_text(build_native.ENGINE_SOURCE.read_text() + "\n# an edit\n")
    assert native.compiled_replica(build_native.source_sha256(edited)) is None
    with structlog.testing.capture_logs() as logs:
        assert native.pick_replica(edited) is engine.Replica
    assert logs[0]["log_level"] == "info"


def test_build_skips_when_the_compiled_engine_matches(compiled, capsys):
    assert build_native.build() is False
    assert "up to date" in capsys.readouterr().out


def test_build_names_a_missing_c_compiler(monkeypatch):
    monkeypatch.setenv("CC", "no-such-cc")
    with pytest.raises(build_native.BuildError, match="C compiler: 'no-such-cc'"):
        build_native.check_toolchain()
