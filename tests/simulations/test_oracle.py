"""The oracle: the cheapest schedule of pool sizes meeting the SLO, found with hindsight."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.controller.types import Observation
from vllm_autoscaler.simulations import generators
from vllm_autoscaler.simulations.hindsight import cheapest_static_pool
from vllm_autoscaler.simulations.oracle import SCHEDULE_WINDOW_S, OraclePolicy, cheapest_choice
from vllm_autoscaler.simulations.run import simulate

# Low, high, low: a fixed pool must hold the high step's pods all along.
LOW_HIGH_LOW = generators.step(rates=(1, 6, 1), step_duration_s=1200, seed=5)


def picked(costs, within, rows) -> tuple[float, float]:
    columns = np.arange(costs.shape[1])
    return costs[rows, columns].sum(), within[rows, columns].sum()


def test_each_window_gets_the_size_whose_extra_requests_within_cost_least():
    # Rows: sizes 0, 1, 2; columns: three windows of 100 requests each.
    costs = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    within = np.array([[100, 50, 90], [100, 95, 99], [100, 100, 100]], dtype=float)
    assert cheapest_choice(costs, within, required=0).tolist() == [0, 0, 0]
    # Each dollar buys: window 1's next size 45 requests within, window 2's 9, then 5 and 1.
    assert cheapest_choice(costs, within, required=285).tolist() == [0, 1, 0]
    assert cheapest_choice(costs, within, required=290).tolist() == [0, 1, 1]
    assert cheapest_choice(costs, within, required=295).tolist() == [0, 2, 1]
    assert cheapest_choice(costs, within, required=300).tolist() == [0, 2, 2]
    assert cheapest_choice(costs, within, required=301).tolist() == [0, 2, 2]  # unreachable


@given(
    arrays(np.float64, (4, 6), elements=st.floats(0, 10)),
    arrays(np.float64, (4, 6), elements=st.floats(0, 100)),
    st.floats(0, 1),
)
def test_the_choice_meets_what_the_best_sizes_can_and_costs_no_more_than_them(
    costs, within, share
):
    best = np.argmax(within, axis=0)
    best_cost, most = picked(costs, within, best)
    required = share * most
    cost, met = picked(costs, within, cheapest_choice(costs, within, required))
    assert met >= required - 1e-9
    assert cost <= best_cost + 1e-9


def test_the_policy_asks_for_each_windows_pods_one_start_up_ahead_and_keeps_them_to_its_end():
    target = load_config().targets[0]
    oracle = OraclePolicy(target, np.array([2, 2, 7, 3]), lead=500.0)
    times = (0, 99, 100, 700, 899, 900, 5000)
    sizes = [oracle.decide(Observation(now), now).kubernetes_replicas for now in times]
    # Window 2 (600-900 s) needs 7: asked for from 100 s; window 3's 3 from 900 s on.
    assert sizes == [2, 2, 7, 7, 7, 3, 3]
    assert SCHEDULE_WINDOW_S == 300.0


def test_the_oracle_meets_the_slo_for_less_than_the_right_sized_fixed_pool_by_following_the_load():
    config = load_config()
    oracle = simulate(LOW_HIGH_LOW, config, "oracle")
    _, static = cheapest_static_pool(LOW_HIGH_LOW, config)
    assert oracle.summary["slo_attainment"] >= config.targets[0].slo.attainment
    assert oracle.summary["cost_total"] < 0.9 * static["cost_total"]
    ready = np.array(oracle.timeline.k8s_ready)
    time = np.array(oracle.timeline.time)
    high, low = ready[(time > 1800) & (time < 2400)], ready[time > 3000]
    assert high.min() > low.max()  # more pods in the high step than after it


def test_on_kubernetes_alone_the_oracle_meets_the_slo():
    config = load_config(overrides=["targets.0.modal=null"])
    oracle = simulate(LOW_HIGH_LOW, config, "oracle")
    assert oracle.summary["slo_attainment"] >= config.targets[0].slo.attainment
    assert oracle.summary["cost_modal"] == 0
