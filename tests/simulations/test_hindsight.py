"""The right-sized static pool: the cheapest fixed pool that met the SLO, found with hindsight."""

from __future__ import annotations

from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.simulations import generators
from vllm_autoscaler.simulations.hindsight import cheapest_static_pool, fewest_pods, static_summary

STEADY = generators.poisson(rate_per_s=5, duration_s=1800, seed=1)
K8S_ONLY = ["targets.0.modal=null"]


def test_the_fewest_pods_meet_the_slo_and_one_fewer_misses_it():
    config = load_config(overrides=K8S_ONLY)
    pods, summary = fewest_pods(STEADY, config)
    required = config.targets[0].slo.attainment
    assert summary["slo_attainment"] >= required
    assert static_summary(STEADY, config, pods - 1, None)["slo_attainment"] < required
    assert 3 <= pods <= 6  # 5 req/s of conversation-like requests on A10G replicas
    again, summary_again = cheapest_static_pool(STEADY, config)  # Kubernetes alone: the same pool
    assert again == pods and summary_again["cost_total"] == summary["cost_total"]


def test_beside_modal_the_cheapest_pool_meets_the_slo_at_no_more_than_the_pods_alone_need():
    hybrid = load_config()
    fewest = fewest_pods(STEADY, hybrid)
    pods, summary = cheapest_static_pool(STEADY, hybrid, fewest=fewest)
    required = hybrid.targets[0].slo.attainment
    assert summary["slo_attainment"] >= required
    beside_modal = static_summary(STEADY, hybrid, fewest[0], None)
    assert beside_modal["slo_attainment"] >= required  # this trace: the same pods suffice
    assert summary["cost_total"] <= beside_modal["cost_total"]
    assert hybrid.targets[0].modal_pool is not None  # Modal was switched off on a copy only


def test_none_when_no_pool_meets_the_slo_or_there_are_no_pods():
    tiny = load_config(overrides=K8S_ONLY + ["targets.0.kubernetes.max_replicas=1"])
    assert fewest_pods(STEADY, tiny) is None and cheapest_static_pool(STEADY, tiny) is None
    modal_only = load_config(overrides=["targets.0.kubernetes=null"])
    assert cheapest_static_pool(STEADY, modal_only) is None

