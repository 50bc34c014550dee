"""The product's policy: bounds, per-tick limits, monotonicity and holding on stale input."""

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.controller.histogram import TTFT_BUCKETS
from vllm_autoscaler.controller.policies.autoscaler import ControllerPolicy, ErrorBudget
from vllm_autoscaler.controller.profile import load_profile
from vllm_autoscaler.controller.types import Observation, PoolState, Sample

TICK = 15.0
PROFILE = load_profile("a10g-llama3-8b")


def policy(*overrides: str) -> ControllerPolicy:
    config = load_config(overrides=list(overrides))
    return ControllerPolicy(config.targets[0], TICK, PROFILE)


def ttft_buckets(p99: float) -> tuple[tuple[float, float], ...]:
    """Window counts of 1000 requests with exponential TTFTs of this p99: the share above x
    is 0.01 ** (x / p99)."""
    return tuple((b, 1000 * (1 - 0.01 ** (b / p99))) for b in (*TTFT_BUCKETS, math.inf))


def ttft_quantile(q: float, p99: float) -> float:
    return p99 * math.log(1 - q) / math.log(0.01)


def observe(now, rate, k8s=(2, 0, 2), modal=(0, 0, 0), ttft=1.0, waiting=0.0, age=0.0, instant=None):
    at = now - age

    def s(v):
        return Sample(v, at)

    return Observation(
        time=now,
        kubernetes=PoolState(*k8s, at=now),
        modal=PoolState(*modal, at=now),
        running=s(rate * 5), waiting=s(waiting), kv_usage_mean=s(0.3), kv_usage_max=s(0.5),
        ttft_p50=s(ttft_quantile(0.5, ttft)), ttft_p95=s(ttft_quantile(0.95, ttft)), ttft_p99=s(ttft),
        ttft_buckets=s(ttft_buckets(ttft)),
        itl_p50=s(0.04), itl_p95=s(0.05), itl_p99=s(0.06),
        arrival_rate=s(rate), arrival_rate_instant=s(rate if instant is None else instant), prompt_tokens_rate=s(rate * 1000), output_tokens_rate=s(rate * 200),
        replicas_reporting=s(2.0),
    )  # fmt: skip


def replay(p: ControllerPolicy, rates, start=0.0):
    """Feed rates tick by tick, with pools that follow the decisions at once."""
    decisions, k8s, modal = [], 0, 0
    for i, rate in enumerate(rates):
        now = start + i * TICK
        d = p.decide(observe(now, rate, (k8s, 0, k8s), (modal, 0, modal)), now)
        k8s = d.kubernetes_replicas if d.kubernetes_replicas is not None else k8s
        modal = d.modal_min_containers if d.modal_min_containers is not None else modal
        decisions.append(d)
    return decisions


rates = st.lists(st.floats(min_value=0, max_value=80, allow_nan=False), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(rates)
def test_bounds_and_per_tick_limits_always_hold(series):
    p = policy("targets.0.kubernetes.min_replicas=1", "targets.0.kubernetes.max_replicas=12",
               "targets.0.modal.max_containers=9")
    params = p.p
    previous = None
    for d in replay(p, series):
        assert 1 <= d.kubernetes_replicas <= 12
        assert 0 <= d.modal_min_containers <= 9
        assert d.modal_buffer_containers >= 0
        if previous is not None:
            change = d.kubernetes_replicas - previous
            assert -params.max_scale_down_per_tick <= change <= params.max_scale_up_per_tick
        previous = d.kubernetes_replicas
        assert d.reason.summary and d.reason.driver


@settings(max_examples=150, deadline=None)
@given(rates, st.floats(min_value=0, max_value=80), st.floats(min_value=0, max_value=40))
def test_desired_capacity_never_falls_as_load_rises(history, last, extra):
    for setup in ([], ["targets.0.modal.enabled=false"], ["targets.0.kubernetes.enabled=false"]):
        low, high = policy(*setup), policy(*setup)
        replay(low, history)
        replay(high, history)
        now = len(history) * TICK
        obs_low = observe(now, last, (3, 0, 3), (1, 0, 1))
        obs_high = observe(now, last + extra, (3, 0, 3), (1, 0, 1))
        a, b = low.decide(obs_low, now), high.decide(obs_high, now)
        total = lambda d: (d.kubernetes_replicas or 0) + (d.modal_min_containers or 0)  # noqa: E731
        assert total(b) >= total(a)


@settings(max_examples=150, deadline=None)
@given(rates, st.sampled_from(["missing", "stale", "nan", "negative"]))
def test_missing_or_stale_input_never_scales_down(history, fault):
    p = policy()
    decisions = replay(p, history)
    now = len(history) * TICK
    last = decisions[-1]
    k8s, modal = last.kubernetes_replicas, last.modal_min_containers
    if fault == "missing":
        obs = Observation(time=now, kubernetes=PoolState(k8s, 0, k8s, now), modal=PoolState(modal, 0, modal, now))
    elif fault == "stale":
        obs = observe(now, 0.0, (k8s, 0, k8s), (modal, 0, modal), age=10 * p.p.stale_after_seconds)
    else:
        obs = observe(now, math.nan if fault == "nan" else -5.0, (k8s, 0, k8s), (modal, 0, modal))
    held = p.decide(obs, now)
    assert held.reason.driver == "hold"
    assert held.kubernetes_replicas >= k8s
    assert held.modal_min_containers >= modal


def test_first_decision_without_metrics_holds_current_capacity():
    p = policy()
    obs = Observation(time=0.0, kubernetes=PoolState(4, 1, 5, 0.0), modal=PoolState(2, 0, 2, 0.0))
    d = p.decide(obs, 0.0)
    assert (d.kubernetes_replicas, d.modal_min_containers) == (5, 2)
    assert d.reason.driver == "hold"


def test_a_burst_in_the_last_tick_scales_up_at_once():
    p = policy("targets.0.modal.enabled=false")
    before = replay(p, [2.0] * 40)[-1].kubernetes_replicas
    now = 40 * TICK
    burst = p.decide(observe(now, 20.0, (before, 0, before)), now)
    assert burst.kubernetes_replicas > before


def test_slo_pressure_adds_capacity_even_when_the_forecast_says_enough():
    calm, pressed = policy("targets.0.modal.enabled=false"), policy("targets.0.modal.enabled=false")
    replay(calm, [5.0] * 30)
    replay(pressed, [5.0] * 30)
    for i in range(30, 50):
        now = i * TICK
        a = calm.decide(observe(now, 5.0, (4, 0, 4), ttft=1.0), now)
        b = pressed.decide(observe(now, 5.0, (4, 0, 4), ttft=10.0, waiting=30), now)
    assert b.kubernetes_replicas > a.kubernetes_replicas
    assert b.reason.driver == "pressure"


def test_error_budget_burn_is_the_late_share_of_the_window_over_the_allowed_share():
    budget = ErrorBudget(window_s=60.0, allowed=0.01)
    assert budget.update(0.0, requests=100, late=0) == 0
    assert math.isclose(budget.update(30.0, requests=100, late=4), 2.0)  # 4 of 200: 2x
    assert math.isclose(budget.update(90.0, requests=100, late=1), 2.5)  # t=0 left the window


def test_queueing_spikes_within_the_error_budget_add_no_pods_a_lasting_burn_does():
    calm, spiky = policy("targets.0.modal.enabled=false"), policy("targets.0.modal.enabled=false")
    hour = int(calm.p.error_budget_window_seconds / TICK)
    replay(calm, [5.0] * hour)
    replay(spiky, [5.0] * hour)
    # p99 4 s against the 3-s SLO: ~3% of requests late, above the 1% budget, below the
    # fast-burn line (5x): a spike a right-sized pool has now and then.
    decide = lambda p, i, ttft: p.decide(observe(i * TICK, 5.0, (4, 0, 4), ttft=ttft), i * TICK)
    for i in range(hour, hour + 20):
        a, b = decide(calm, i, 1.0), decide(spiky, i, 4.0)
        assert b.reason.driver == "forecast"
        assert b.kubernetes_replicas == a.kubernetes_replicas
    for i in range(hour + 20, 2 * hour):  # it lasts: the hour's budget runs out
        b = decide(spiky, i, 4.0)
        if b.reason.driver == "pressure":
            break
    assert b.reason.driver == "pressure" and "error budget" in b.reason.summary
    assert i - hour < hour / 2  # 3x the allowed share spends an hour's budget in 20 minutes


def test_a_rise_within_the_tolerance_keeps_the_pods_unless_larger_or_on_a_ramp():
    p = policy()  # hysteresis 0.1, as the HPA's tolerance
    assert p._tolerate(4.4, asked=4, rising=0.0, tolerance=0.4) == 4  # rate noise
    assert p._tolerate(4.5, asked=4, rising=0.0, tolerance=0.4) == 5
    assert p._tolerate(4.4, asked=4, rising=0.4, tolerance=0.4) == 5  # the trend explains it: a ramp
    assert p._tolerate(3.2, asked=4, rising=0.0, tolerance=0.4) == 4  # scale-down is the guard's business
    assert p._tolerance(4, rate=5.0, capacity=1.3, pressure=None) == pytest.approx(0.4)
    assert p._tolerance(2, rate=5.0, capacity=1.3, pressure=None) == pytest.approx(0.2)  # of the pods asked
    # Under pressure only the rate's counting noise: two standard errors of a minute's count.
    noise = 2 * math.sqrt(16.8 / 60) / 1.3
    assert p._tolerance(12, rate=16.8, capacity=1.3, pressure="late") == pytest.approx(noise)  # < 1.2
    assert p._tolerance(4, rate=5.0, capacity=1.3, pressure="late") == pytest.approx(0.4)  # < noise


@pytest.mark.parametrize("rate, asked, grows", [(20.44, 12, True), (6.5, 4, False)])
def test_under_pressure_a_large_pool_grows_by_what_the_cut_asks_beyond_the_rate_noise(rate, asked, grows):
    """One cut of the capacity estimate asks 12.8 pods' worth of a pool of 12: 10% would keep
    the 12 that proved short (and a second cut a minute later overshot to 14); the rate's noise
    (0.6 pod here) does not. On 4 pods the cut's 4.07 stays within that noise."""
    p = policy()
    replay(p, [rate] * 40)
    now = 40 * TICK
    assert p.decide(observe(now, rate, (asked, 0, asked)), now).kubernetes_replicas == asked
    late = p.decide(observe(now + TICK, rate, (asked, 0, asked), ttft=10.0), now + TICK)
    assert late.reason.driver == "pressure"
    assert late.kubernetes_replicas == asked + grows


@pytest.mark.parametrize("ready, cut", [(4, 0.93), (45, 1 - 1 / 45)])
def test_a_full_kv_cache_cuts_the_capacity_estimate_by_one_replicas_share_at_most(ready, cut):
    """A warning, not a miss: on 4 replicas the usual 7% cut; on 45, where 7% asked for 3 pods
    more, one replica's share (2.2%)."""
    p = policy()
    replay(p, [1.0] * 40)
    now = 40 * TICK
    before = p.correction
    full = replace(observe(now, 40.0, (ready, 0, ready), waiting=3.0), kv_usage_mean=Sample(0.95, now))
    d = p.decide(full, now)
    assert d.reason.driver == "pressure" and "KV cache 95% full" in d.reason.summary
    assert d.reason.details["correction"] == pytest.approx(before * cut)


def test_after_a_metrics_outage_scale_down_still_waits_a_full_window():
    p = policy("targets.0.modal.enabled=false")
    window = p.p.scale_down_stabilization_seconds
    high = replay(p, [20.0] * 20)[-1].kubernetes_replicas
    now = 20 * TICK
    outage_end = now + 2 * window
    while now < outage_end:  # longer than the window: every tick holds
        obs = Observation(time=now, kubernetes=PoolState(high, 0, high, now))
        assert p.decide(obs, now).kubernetes_replicas == high
        now += TICK
    first = p.decide(observe(now, 1.0, (high, 0, high)), now)
    assert first.kubernetes_replicas == high  # no scale-down on the first fresh tick


def test_queued_requests_add_capacity_in_proportion_and_drop_once_drained():
    p = policy()
    replay(p, [2.0] * 40)
    now = 40 * TICK
    calm = p.decide(observe(now, 2.0, (2, 0, 2), (0, 0, 0)), now)
    queued = p.decide(observe(now + TICK, 2.0, (2, 0, 2), (0, 0, 0), waiting=60), now + TICK)
    assert queued.modal_min_containers > calm.modal_min_containers  # seconds, not minutes
    # Drained over a container's start-up and the SLO: they wait for the start-up anyway.
    target = p.target
    beyond_tolerated = 60 - p.p.waiting_per_replica_target * 2
    drain = beyond_tolerated / (target.slo.ttft_seconds + target.modal_pool.startup.high)
    added = queued.reason.details["modal_gap_rate"] - calm.reason.details["modal_gap_rate"]
    assert added == pytest.approx(drain, rel=0.05)
    assert queued.reason.driver == "pressure"
    assert queued.kubernetes_replicas >= calm.kubernetes_replicas  # never shrinks under pressure


def test_recurring_bursts_the_rate_averages_away_keep_warm_pods_then_lapse():
    p = policy()
    memory = p.p.burst_memory_seconds
    pods = 4  # 4 pods at 1 req/s: mostly idle, yet the TTFT SLO is missed
    for i in range(40):
        p.decide(observe(i * TICK, 1.0, (pods, 0, pods)), i * TICK)
    now = 40 * TICK
    first = p.decide(observe(now, 1.0, (pods, 0, pods), ttft=9.0), now)
    assert first.reason.details["burst_reserve"] == 0  # one overload is not yet a pattern
    again = now + 5 * 60
    second = p.decide(observe(again, 1.0, (pods, 0, pods), ttft=9.0), again)
    assert second.reason.details["burst_reserve"] > pods
    assert second.kubernetes_replicas > pods
    quiet = [again + TICK * i for i in range(1, int(memory / TICK) + 2)]
    for t in quiet:
        last = p.decide(observe(t, 1.0, (pods + 1, 0, pods + 1)), t)
    assert last.reason.details["burst_reserve"] < second.reason.details["burst_reserve"]


@pytest.mark.parametrize("queued, pressure", [(1, False), (12, True)])
def test_inputs_queued_at_modal_are_pressure_only_beyond_the_tolerated_queue(queued, pressure):
    # A request spilled while every pod was mid-step waits for a container to start: one
    # such stray is no shortage, and twice within the burst memory it must not buy a reserve.
    p = policy()
    pods = 4
    for i in range(40):
        p.decide(observe(i * TICK, 1.0, (pods, 0, pods)), i * TICK)
    for now in (40 * TICK, 60 * TICK):
        modal = PoolState(0, 1, 0, at=now, backlog=queued)
        d = p.decide(replace(observe(now, 1.0, (pods, 0, pods)), modal=modal), now)
    assert (d.reason.driver == "pressure") is pressure
    assert (d.reason.details["burst_reserve"] > pods) is pressure


def test_a_burst_between_two_scrapes_keeps_what_its_rate_needs_warm_then_lapses():
    # 12 req/s for one scrape interval in a minute at 1-2 req/s: the window's mean hides it.
    p, steady = policy(), policy()
    memory = p.p.burst_memory_seconds
    replay(p, [1.0] * 40)
    replay(steady, [1.0] * 40)
    now = 40 * TICK
    d = p.decide(observe(now, 2.0, (2, 0, 2), instant=12.0), now)
    needed = math.ceil(12.0 / d.reason.details["capacity_per_replica"])
    assert d.reason.details["burst_reserve"] == needed > 2
    assert d.kubernetes_replicas >= needed  # warm before the next one, served or not
    # Twice the minute's rate or less is the noise of a small count: no reserve.
    noise = steady.decide(observe(now, 2.0, (2, 0, 2), instant=3.9), now)
    assert noise.reason.details["burst_reserve"] == 0
    # The burst stays in the minute the peak is taken over; `memory` later the reserve halves.
    quiet = [now + TICK * i for i in range(1, int((memory + 60) / TICK) + 1)]
    for t in quiet:
        last = p.decide(observe(t, 1.0, (needed, 0, needed)), t)
        if t == quiet[-2]:
            assert last.reason.details["burst_reserve"] == needed
    assert last.reason.details["burst_reserve"] == needed // 2


def test_the_burst_reserve_follows_smaller_bursts_down():
    # A large burst, then a smaller one half a memory later.
    p = policy()
    memory = p.p.burst_memory_seconds
    replay(p, [1.0] * 40)
    big_at, small_at = 40 * TICK, 40 * TICK + memory / 2
    big = p.decide(observe(big_at, 2.0, (2, 0, 2), instant=12.0), big_at)
    t = big_at
    while t < big_at + memory + 2 * 60:
        t += TICK
        d = p.decide(observe(t, 1.0, (8, 0, 8), instant=6.0 if t == small_at else None), t)
        if t == small_at:
            small = d.reason.details["burst_reserve"]
    needed = math.ceil(6.0 / d.reason.details["capacity_per_replica"])
    assert big.reason.details["burst_reserve"] > needed > 2
    assert small == big.reason.details["burst_reserve"]  # the larger burst is recent still
    # `memory` after the larger burst, what it needed has halved: the smaller one's need rules.
    assert big.reason.details["burst_reserve"] // 2 < needed
    assert d.reason.details["burst_reserve"] == needed


@pytest.mark.parametrize("recurring", [False, True])
def test_a_lone_burst_that_outlasts_a_pods_start_up_leaves_half_its_reserve(recurring):
    # A sudden burst still on once pods started for it are ready was a level the rate
    # followed: kept whole, its need would hold idle pods for half an hour after it ends. One
    # that comes while an earlier burst's reserve is held is a pattern: it keeps its need.
    p = policy()
    lead = p.target.kubernetes_pool.startup_seconds.high + TICK
    replay(p, [1.0] * 40)
    onset = 40 * TICK
    if recurring:
        p.decide(observe(onset - 600, 2.0, instant=12.0), onset - 600)
    d = p.decide(observe(onset, 2.0, instant=12.0), onset)
    needed = d.reason.details["burst_reserve"]
    assert needed > 4
    t = onset
    while t < onset + lead + 60:
        t += TICK
        d = p.decide(observe(t, 10.0, (8, 0, 8), instant=10.0), t)
    for _ in range(20):  # over: back to 1 req/s
        t += TICK
        d = p.decide(observe(t, 1.0, (8, 0, 8)), t)
    assert d.reason.details["burst_reserve"] == (needed if recurring else needed // 2)


def test_the_burst_reserves_pods_still_starting_are_kept_warm_on_modal():
    # Pods take minutes to start; the next burst may come first, and only warm capacity
    # serves it within the SLO.
    p = policy()
    replay(p, [1.0] * 40)
    now = 40 * TICK
    first = p.decide(observe(now, 2.0, (2, 0, 2), instant=12.0), now)
    reserve = first.reason.details["burst_reserve"]
    assert first.kubernetes_replicas >= reserve > 2
    assert first.modal_min_containers >= reserve - 2
    starting = p.decide(observe(now + TICK, 2.0, (3, reserve - 3, reserve)), now + TICK)
    assert starting.modal_min_containers >= reserve - 3
    assert starting.reason.details["reserve_starting"] == reserve - 3
    ready = p.decide(observe(now + 2 * TICK, 2.0, (reserve, 0, reserve)), now + 2 * TICK)
    assert ready.reason.details["reserve_starting"] == 0
    # Not beyond the pods Kubernetes may hold: the reserve is what pods are asked for.
    capped = policy("targets.0.kubernetes.max_replicas=4")
    replay(capped, [1.0] * 40)
    d = capped.decide(observe(now, 2.0, (2, 0, 2), instant=12.0), now)
    assert d.reason.details["burst_reserve"] > 4 and d.reason.details["reserve_starting"] == 2


def test_an_overload_that_the_mean_rate_explains_is_no_burst():
    p = policy()
    replay(p, [6.0] * 40)
    for i in range(40, 80):  # 4 pods at 6 req/s: busy, overloaded for minutes
        now = i * TICK
        d = p.decide(observe(now, 6.0, (4, 0, 4), ttft=9.0), now)
    assert d.reason.details["burst_reserve"] == 0


@pytest.mark.parametrize("pools", [[], ["targets.0.kubernetes=null"]], ids=["hybrid", "modal alone"])
def test_the_pools_buffer_containers_is_a_floor_on_the_buffer(pools):
    # Idle containers the user buys ahead of sudden bursts stay, whatever the forecast says.
    p = policy(*pools, "targets.0.modal.buffer_containers=3")
    decisions = replay(p, [0.5] * 20 + [30.0] * 5 + [0.5] * 20)
    assert all(d.modal_buffer_containers >= 3 for d in decisions)


DAY = 86400.0


def daily_history(now: float, rate_at) -> list[Observation]:
    """A day and an hour of observations before `now`, without pool states (as a metric
    source's history has them), the rate given by `rate_at(seconds before now)`."""
    ticks = int((DAY + 3600) / TICK)
    return [replace(observe(now - i * TICK, rate_at(i * TICK)), kubernetes=None, modal=None)
            for i in range(ticks, 0, -1)]  # fmt: skip


def test_recalled_history_brings_back_the_daily_rise_and_the_spent_budget():
    now = 10 * DAY
    # Yesterday the rate rose from 1 to 12 req/s a few minutes after this time of day.
    def yesterday_rises(before: float) -> float:
        return 12.0 if DAY - 600 <= before <= DAY - 120 else 1.0

    alone = "targets.0.modal=null"  # pods only: the forecast over a pod's start-up sizes them
    fresh, restarted = policy(alone), policy(alone)
    assert restarted.memory_seconds >= DAY + 3600
    restarted.recall(daily_history(now, yesterday_rises))
    seen = replace(observe(now, 1.0, (3, 0, 3)), modal=None)
    before, after = fresh.decide(seen, now), restarted.decide(seen, now)
    assert after.reason.details["k8s_forecast"] == pytest.approx(12.0)
    assert before.reason.details["k8s_forecast"] == pytest.approx(1.0)
    assert after.kubernetes_replicas > before.kubernetes_replicas
    # TTFT over the SLO for the last ten minutes of the history: the budget is spent.
    late = policy(alone)
    history = daily_history(now, lambda before: 1.0)
    late.recall([replace(o, ttft_buckets=Sample(ttft_buckets(6.0), o.time)) if o.time > now - 600
                 else o for o in history])
    assert late.decide(seen, now).reason.details["error_budget_burn"] > 1
    assert fresh.decide(seen, now + TICK).reason.details["error_budget_burn"] < 0.01


def test_after_a_lull_shorter_than_a_pods_start_up_the_pods_wait_out_the_next():
    # On Kubernetes alone, pods start within 480 s. A minute at 10 req/s, then 6 minutes of
    # nothing: longer than the 5-minute scale-down window, shorter than a pod's start-up.
    on, off = [10.0] * 4, [0.0] * 24
    pods = [d.kubernetes_replicas for d in replay(policy("targets.0.modal=null"), (on + off) * 4)]
    assert min(pods[4:28]) < pods[3]  # the first lull: nothing known yet, the pods go
    assert min(pods[60:84]) == pods[59]  # after one: they wait the third out
    # A load that stops for good, with no short lull before: released after the usual window.
    stop = [d.kubernetes_replicas for d in replay(policy("targets.0.modal=null"), on * 10 + off)]
    assert stop[-1] < stop[39]


def replay_with_spill(p: ControllerPolicy, rates, spill):
    """As `replay`, with Modal running `spill(i, rate, pods)` containers beyond the warm pool."""
    decisions, k8s = [], 0
    for i, rate in enumerate(rates):
        now = i * TICK
        warm = p.last.modal_min_containers if p.last else 0
        modal = (warm + spill(i, rate, k8s), 0, warm)
        d = p.decide(observe(now, rate, (k8s, 0, k8s), modal), now)
        k8s = d.kubernetes_replicas
        decisions.append(d)
    return decisions


def test_a_spill_that_keeps_modal_warm_most_of_the_time_buys_a_pod_while_the_load_stays():
    # A flat load one pod carries by its rate, whose noise spills to Modal 4 ticks in 5: a
    # container billed ~80% of the time costs more than a pod (Modal's price is 1.45x).
    flat, fallen = [1.0] * 160, [0.3] * 80
    first = replay(policy(), [1.0])[0].kubernetes_replicas

    def spill(i, rate, pods):
        return int(rate == 1.0 and pods <= first and i % 5 != 0)

    pods = [d.kubernetes_replicas for d in replay_with_spill(policy(), flat + fallen, spill)]
    assert pods[10] == first  # half the base window of evidence first
    assert pods[40] == first + 1
    assert set(pods[40:160]) == {first + 1}  # kept although the spill it stopped is gone
    assert pods[-1] == first  # the load fell by half a replica and more: released
    # A container warm a third of the time costs less than a pod: no pod for it.
    rare = [d.kubernetes_replicas for d in replay_with_spill(policy(), flat, lambda i, *_: int(i % 3 == 0))]
    assert set(rare) == {first}


def test_spill_while_pods_start_or_the_load_rises_is_modal_doing_its_job():
    p = policy()
    warm = 0
    for i in range(80):  # a pod asked for is still starting: Modal covers for it
        now = i * TICK
        d = p.decide(observe(now, 1.0, (1, 1, 2), (warm + 1, 0, warm)), now)
        warm = d.modal_min_containers
        assert d.reason.details["spill_pods"] == 0


def test_slo_pressure_while_modal_covers_starting_pods_does_not_cut_the_capacity_estimate():
    # Requests late beside pods still starting: Modal's containers start in seconds, the pods
    # in minutes; the lateness says nothing about what a replica serves.
    def corrections(p, k8s):
        return [p.decide(observe(i * TICK, 4.0, k8s, ttft=10.0), i * TICK).reason.details["correction"]
                for i in range(12)]

    assert corrections(policy(), (2, 2, 4))[-1] == 1.0
    assert corrections(policy(), (4, 0, 4))[-1] < 1.0  # what was asked for is there: cut
    # On Kubernetes alone nothing covers the start-up: the shortfall is pressure.
    assert corrections(policy("targets.0.modal=null"), (2, 2, 4))[-1] < 1.0
