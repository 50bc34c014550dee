"""Costs, conservation of requests and determinism of the simulator."""

import numpy as np
import pytest
from helpers import Fixed, config, run, trace

from vllm_autoscaler.controller.profile import load_profile
from vllm_autoscaler.simulations.traces import Trace

A10G = load_profile("a10g-llama3-8b")

K8S_ONLY = "targets.0.modal.enabled=false"
MODAL_ONLY = "targets.0.kubernetes.enabled=false"


def test_kubernetes_cost_is_pod_lifetime_times_price():
    cfg = config(K8S_ONLY, "targets.0.kubernetes.price_per_gpu_hour=3.6",
                 "targets.0.kubernetes.gpus_per_replica=2")
    result = run(trace([10.0, 20.0], [100, 100], [10, 10]), cfg, Fixed(2))
    end = 20.0 + result.e2e[1]
    # Two pods from t=0 (first tick) to the end, 2 GPUs each, $3.6 per GPU-hour.
    assert result.summary["cost_k8s"] == pytest.approx(2 * 2 * end * 3.6 / 3600)
    assert result.summary["gpu_hours_k8s"] == pytest.approx(2 * 2 * end / 3600)
    assert result.summary["cost_modal"] == 0


def test_modal_bills_warm_idle_time_until_the_scaledown_window_ends():
    cfg = config(MODAL_ONLY, "targets.0.modal.scaledown_window_seconds=60",
                 "targets.0.modal.price_per_gpu_second=0.01")
    result = run(trace([10.0, 200.0], [100, 100], [10, 10]), cfg, Fixed(None, 0))
    busy = result.e2e[0]
    # Container 1: started by the request at t=10 (instant start), idle 60 s after its
    # request finished, then shut down; container 2 lives from t=200 to the end.
    expected_seconds = (busy + 60) + result.e2e[1]
    assert result.summary["cost_modal"] == pytest.approx(expected_seconds * 0.01)


def test_modal_cold_start_delays_the_first_request():
    cfg = config(MODAL_ONLY, "targets.0.modal.snapshot_start_seconds={low: 8, mode: 8, high: 8}")
    result = run(trace([10.0], [500], [11]), cfg, Fixed(None, 0))
    assert result.ttft[0] == pytest.approx(8 + 0.02 + 0.5)


def random_trace(n: int, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    arrivals = np.sort(rng.uniform(0, 600, n))
    return Trace(arrivals, rng.integers(1, 3000, n), rng.integers(1, 500, n), name="random")


@pytest.mark.parametrize("capacity", [0, 1, 3])
def test_every_request_is_completed_or_counted_failed(capacity):
    cfg = config("simulation.request_timeout_seconds=30")
    result = run(random_trace(3000, 1), cfg, Fixed(capacity, 0), A10G)
    s = result.summary
    finished = np.isfinite(result.e2e)
    assert s["completed"] + s["failed"] == s["requests"] == 3000
    assert s["completed"] <= finished.sum()
    assert sum(s["failures_by_reason"].values()) == s["failed"]


def test_same_seed_same_result_and_another_seed_differs():
    slow = "targets.0.kubernetes.startup_seconds={low: 60, mode: 120, high: 300}"
    tr = random_trace(2000, 2)
    a = run(tr, config(slow, K8S_ONLY), Fixed(3), A10G)
    b = run(tr, config(slow, K8S_ONLY), Fixed(3), A10G)
    c = run(tr, config(slow, K8S_ONLY, "simulation.seed=7"), Fixed(3), A10G)
    strip = lambda s: {k: v for k, v in s.items() if k != "sim_wall_seconds"}  # noqa: E731
    assert strip(a.summary) == strip(b.summary)
    assert strip(a.summary) != strip(c.summary)
