"""The `hpa` baseline against the Kubernetes HPA documentation's worked examples and rules,
and the static / modal-only baselines."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vllm_autoscaler.config.schema import HpaPolicy as HpaParams
from vllm_autoscaler.config.schema import KubernetesPool, ModalPool, Policies, Target
from vllm_autoscaler.config.schema import StaticPolicy as StaticParams
from vllm_autoscaler.controller.policies.baselines import ModalOnlyPolicy, StaticPolicy
from vllm_autoscaler.controller.policies.hpa import HpaPolicy, metric_replicas
from vllm_autoscaler.controller.types import Observation, PoolState, Sample

TICK = 15.0


def target(min_replicas=1, max_replicas=10, modal: ModalPool | None = None, **hpa) -> Target:
    return Target(
        kubernetes=KubernetesPool(min_replicas=min_replicas, max_replicas=max_replicas),
        modal=modal,
        policy=Policies(hpa=HpaParams(**{"target_average": 100, **hpa})),
    )


def observe(now, desired, per_pod=None, ready=None, starting=0, reporting=None, **samples) -> Observation:
    """`desired` replicas, `ready` of them ready (default all) of which `reporting` report
    (default all ready), each running `per_pod` requests on average (None: metric missing)."""
    ready = desired if ready is None else ready
    reporting = ready if reporting is None else reporting
    running = None if per_pod is None else per_pod * reporting
    return Observation(
        time=now,
        kubernetes=PoolState(ready=ready, starting=starting, desired=desired, at=now),
        running=Sample(running, now),
        replicas_reporting=Sample(reporting, now),
        **{name: Sample(value, now) for name, value in samples.items()},
    )


def run(policy: HpaPolicy, per_pod_at, start: int, ticks: int) -> list[int]:
    """Ticks of a world whose pods become ready at once; per_pod_at(t) is the load per pod."""
    replicas, history = start, []
    for i in range(ticks):
        now = i * TICK
        replicas = policy.decide(observe(now, replicas, per_pod_at(now)), now).kubernetes_replicas
        history.append(replicas)
    return history


# ---- the replica calculation (docs: "Algorithm details") --------------------------------


def test_docs_example_200m_vs_100m_doubles():
    """"if the current metric value is 200m, and the desired value is 100m, the number of
    replicas will be doubled"."""
    decision = HpaPolicy(target(), TICK).decide(observe(0, 1, per_pod=200), 0)
    assert decision.kubernetes_replicas == 2
    assert decision.reason.driver == "hpa"
    assert decision.reason.details["metric"] == "running"
    assert decision.reason.details["ratio"] == pytest.approx(2.0)
    assert "1 -> 2 replicas" in decision.reason.summary


def test_docs_example_50m_vs_100m_halves():
    policy = HpaPolicy(target(scale_down_stabilization_seconds=0), TICK)
    assert policy.decide(observe(0, 4, per_pod=50), 0).kubernetes_replicas == 2


@pytest.mark.parametrize(("per_pod", "expected"), [(109, 4), (91, 4), (112, 5), (88, 4), (70, 3)])
def test_tolerance_skips_small_changes(per_pod, expected):
    """Within 10 % of the target nothing changes; past it, ceil(ratio * pods)."""
    policy = HpaPolicy(target(scale_down_stabilization_seconds=0), TICK)
    # 88/100 * 4 = 3.52: outside the tolerance, but the ceiling keeps 4.
    assert policy.decide(observe(0, 4, per_pod=per_pod), 0).kubernetes_replicas == expected


def test_configurable_tolerance():
    policy = HpaPolicy(target(tolerance=0.3), TICK)
    assert policy.decide(observe(0, 4, per_pod=125), 0).kubernetes_replicas == 4


def test_missing_metrics_count_at_target_on_scale_down():
    """4 ready pods, 2 report 50 against 100: the 2 silent ones count as 100 -> ratio 0.75."""
    policy = HpaPolicy(target(scale_down_stabilization_seconds=0), TICK)
    assert policy.decide(observe(0, 4, per_pod=50, reporting=2), 0).kubernetes_replicas == 3


@pytest.mark.parametrize(("per_pod", "expected"), [(215, 4), (300, 6)])
def test_missing_metrics_count_as_zero_on_scale_up(per_pod, expected):
    """2 of 4 report 215: counting only them would give ceil(2.15 * 2) = 5, but the silent
    ones at 0 bring the ratio to 1.075, within tolerance; at 300 the ratio over 4 is 1.5."""
    policy = HpaPolicy(target(), TICK)
    assert policy.decide(observe(0, 4, per_pod=per_pod, reporting=2), 0).kubernetes_replicas == expected


def test_missing_metrics_that_reverse_the_direction_change_nothing():
    assert metric_replicas(120, 100, with_metrics=2, missing=2, unready=0, current=4, tolerance=0.1) == 4


def test_not_ready_pods_count_as_zero_on_scale_up():
    """2 ready pods at 160 of 3 would go to ceil(1.6 * 2) = 4; the starting pod at 0 brings
    the ratio to 320/300, within tolerance: no change."""
    without = HpaPolicy(target(), TICK).decide(observe(0, 3, per_pod=160, ready=2), 0)
    assert without.kubernetes_replicas == 4
    with_starting = HpaPolicy(target(), TICK).decide(observe(0, 3, per_pod=160, ready=2, starting=1), 0)
    assert with_starting.kubernetes_replicas == 3
    # and a big load still scales up, over ready + starting pods: 2*400/100 = 8
    assert metric_replicas(400, 100, with_metrics=2, missing=0, unready=1, current=3, tolerance=0.1) == 8


def test_not_ready_pods_are_ignored_on_scale_down():
    assert metric_replicas(30, 100, with_metrics=2, missing=0, unready=2, current=4, tolerance=0.1) == 1


def test_no_metric_holds_the_current_count():
    policy = HpaPolicy(target(), TICK)
    decision = policy.decide(observe(0, 3, per_pod=None), 0)
    assert decision.kubernetes_replicas == 3
    assert "no running metric" in decision.reason.summary
    no_ready = policy.decide(observe(15, 3, per_pod=500, ready=0, starting=3), 15)
    assert no_ready.kubernetes_replicas == 3


@pytest.mark.parametrize(
    ("metric", "samples", "expected"),
    [
        ("waiting", {"waiting": 80.0}, 4),  # 40 per pod vs 20
        ("running_plus_waiting", {"waiting": 40.0}, 3),  # 120 per pod vs 100
        ("kv_usage", {"kv_usage_mean": 0.9}, 3),
    ],
)
def test_other_metrics(metric, samples, expected):
    targets = {"waiting": 20, "running_plus_waiting": 100, "kv_usage": 0.6}
    policy = HpaPolicy(target(metric=metric, target_average=targets[metric]), TICK)
    # 2 pods running 100 each.
    assert policy.decide(observe(0, 2, per_pod=100, **samples), 0).kubernetes_replicas == expected


def test_kv_usage_target_must_be_a_fraction():
    with pytest.raises(ValueError, match="target_average for metric kv_usage is a fraction"):
        HpaPolicy(target(metric="kv_usage", target_average=60), TICK)


# ---- stabilisation and behaviour (docs: "Stabilization window", "Scaling policies") -----


def test_scale_down_waits_out_the_300_s_window():
    """The load drops after t = 15; the highest recommendation of the last 300 s (made at
    t = 15) holds the count until t = 315."""
    policy = HpaPolicy(target(max_replicas=10), TICK)
    history = run(policy, lambda t: 500 if t <= 15 else 10, start=2, ticks=25)
    times = [i * TICK for i in range(25)]
    assert history[:2] == [6, 10]  # 2 -> +4 pods (over 100 %), then the max
    assert all(r == 10 for r, t in zip(history, times) if 15 <= t < 315)
    assert history[times.index(315)] == 1


def test_initial_count_is_the_first_recommendation():
    """horizontal.go records the starting count: no scale-down in the first window."""
    policy = HpaPolicy(target(scale_down_stabilization_seconds=60), TICK)
    history = run(policy, lambda t: 10, start=8, ticks=5)
    assert history == [8, 8, 8, 8, 1]


def test_scale_up_stabilization_takes_the_lowest():
    policy = HpaPolicy(target(scale_up_stabilization_seconds=30, max_replicas=50), TICK)
    history = run(policy, lambda t: 300, start=2, ticks=6)
    # Recommendations are 3x the current count, and the lowest of the last 30 s wins: the
    # starting count (2, recorded at t = 0) until t = 30; then 6 (made at t = 0 and 15); at
    # t = 60, 18 (t = 45) cut to 12 by the +100 % limit; at t = 75, 18 (t = 60), not 36.
    assert history == [2, 2, 6, 6, 12, 18]


def test_default_scale_up_policy_max_of_double_and_four_pods():
    """Defaults: +100 % or +4 pods per 15 s, whichever is more."""
    policy = HpaPolicy(target(max_replicas=100), TICK)
    assert run(policy, lambda t: 10_000, start=1, ticks=5) == [5, 10, 20, 40, 80]


def test_scale_up_limit_counts_changes_within_the_period():
    """With a 5 s sync, the +4 of t = 0 still counts at t = 5 and 10; at t = 15 it has left
    the 15 s period."""
    policy = HpaPolicy(target(max_replicas=100), tick_seconds=5)
    replicas, history = 1, []
    for now in (0, 5, 10, 15):
        replicas = policy.decide(observe(now, replicas, 10_000), now).kubernetes_replicas
        history.append(replicas)
    assert history == [5, 5, 5, 10]
    assert "scale-up limit" in policy.last.reason.summary


def test_scale_down_percent_policy():
    """Down by at most 10 % per 60 s: 100 -> 90 -> 81 (int(90 * 0.9))."""
    params = {"scale_down_percent": 10, "policy_period_seconds": 60, "scale_down_stabilization_seconds": 0}
    policy = HpaPolicy(target(max_replicas=100, **params), TICK)
    replicas, history = 100, []
    for now in (0, 15, 45, 60):
        replicas = policy.decide(observe(now, replicas, 1), now).kubernetes_replicas
        history.append(replicas)
    assert history == [90, 90, 90, 81]


def test_bounds_clamp_out_of_range_counts():
    policy = HpaPolicy(target(min_replicas=2, max_replicas=5), TICK)
    assert policy.decide(observe(0, 8, per_pod=100), 0).kubernetes_replicas == 5
    assert policy.decide(observe(15, 1, per_pod=100), 15).kubernetes_replicas == 2
    assert policy.decide(observe(30, 5, per_pod=1000), 30).kubernetes_replicas == 5


def test_min_replicas_zero_acts_as_one():
    policy = HpaPolicy(target(min_replicas=0, scale_down_stabilization_seconds=0), TICK)
    assert policy.decide(observe(0, 3, per_pod=0), 0).kubernetes_replicas == 1


def test_calls_between_syncs_repeat_the_last_decision():
    policy = HpaPolicy(target(), tick_seconds=30)
    first = policy.decide(observe(0, 1, per_pod=200), 0)
    assert policy.decide(observe(10, 2, per_pod=900), 10) is first
    assert policy.decide(observe(30, 2, per_pod=900), 30).kubernetes_replicas > 2


# ---- pools --------------------------------------------------------------------------------


def test_modal_keeps_its_configured_warm_pool():
    modal = ModalPool(min_containers=2, buffer_containers=1)
    decision = HpaPolicy(target(modal=modal), TICK).decide(observe(0, 1, per_pod=200), 0)
    assert (decision.modal_min_containers, decision.modal_buffer_containers) == (2, 1)
    no_modal = HpaPolicy(target(), TICK).decide(observe(0, 1, per_pod=200), 0)
    assert (no_modal.modal_min_containers, no_modal.modal_buffer_containers) == (None, None)


def test_without_a_kubernetes_pool_nothing_is_scaled():
    modal_only = Target(kubernetes=None, modal=ModalPool(min_containers=1))
    decision = HpaPolicy(modal_only, TICK).decide(Observation(time=0), 0)
    assert decision.kubernetes_replicas is None and decision.modal_min_containers == 1


def test_static_policy():
    t = target(modal=ModalPool(min_containers=0, buffer_containers=2, max_containers=8))
    decision = StaticPolicy(t, 4, 3).decide(observe(0, 1, per_pod=900), 0)
    assert (decision.kubernetes_replicas, decision.modal_min_containers, decision.modal_buffer_containers) == (4, 3, 2)
    defaults = Target(policy=Policies(static=StaticParams(kubernetes_replicas=2, modal_min_containers=1)))
    decision = StaticPolicy(defaults).decide(Observation(time=0), 0)
    assert (decision.kubernetes_replicas, decision.modal_min_containers) == (2, 1)
    with pytest.raises(ValueError, match=r"static replicas 11 outside the Kubernetes pool's \[1, 10\]"):
        StaticPolicy(t, 11)


def test_modal_only_policy():
    t = target(modal=ModalPool(min_containers=1, buffer_containers=2))
    decision = ModalOnlyPolicy(t).decide(observe(0, 3, per_pod=500), 0)
    assert (decision.kubernetes_replicas, decision.modal_min_containers, decision.modal_buffer_containers) == (0, 1, 2)
    alone = Target(kubernetes=None, modal=ModalPool())
    assert ModalOnlyPolicy(alone).decide(Observation(time=0), 0).kubernetes_replicas is None
    with pytest.raises(ValueError, match="needs a Modal pool"):
        ModalOnlyPolicy(target())


# ---- properties ---------------------------------------------------------------------------

ticks = st.lists(
    st.tuples(
        st.integers(0, 30),  # desired (may be outside the bounds)
        st.integers(0, 30),  # ready
        st.integers(0, 5),  # starting
        st.one_of(st.none(), st.floats(0, 1000)),  # per-pod load
        st.integers(0, 30),  # reporting
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ticks, st.integers(0, 5), st.integers(1, 20))
def test_decisions_stay_within_bounds(history, low, span):
    policy = HpaPolicy(target(min_replicas=low, max_replicas=low + span), TICK)
    for i, (desired, ready, starting, per_pod, reporting) in enumerate(history):
        now = i * TICK
        obs = observe(now, desired, per_pod, ready=ready, starting=starting, reporting=reporting)
        replicas = policy.decide(obs, now).kubernetes_replicas
        assert max(low, 1) <= replicas <= low + span


@settings(max_examples=200, deadline=None)
@given(ticks, st.integers(1, 10), st.floats(0.905, 1.095))
def test_within_tolerance_never_changes(history, current, ratio):
    policy = HpaPolicy(target(max_replicas=10), TICK)
    for i, (desired, ready, starting, per_pod, reporting) in enumerate(history):
        now = i * TICK
        policy.decide(observe(now, max(desired, 1), per_pod, ready=ready, starting=starting, reporting=reporting), now)
    now = len(history) * TICK
    assert policy.decide(observe(now, current, 100 * ratio), now).kubernetes_replicas == current
