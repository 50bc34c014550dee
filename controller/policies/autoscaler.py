"""The product's policy (`controller`): forecast, capacity model, hybrid cost planner, safety.

Each tick:
1. Forecast the arrival rate over each pool's lead time (Kubernetes: pod start-up; Modal:
   container start-up), with an upper band; the token mix from the measured token rates.
2. Capacity of one replica within the SLO from the replica profile, scaled by an online
   correction learnt from SLO pressure: TTFT misses spending the error budget too fast,
   waiting requests, KV usage.
3. Plan: Kubernetes (cheap per hour, slow) carries the base load that will still be there
   when a new pod is ready — the load level present often enough that an hourly-billed pod
   beats per-second Modal billing; Modal warm containers cover the rest of the band and
   the gap while pods start; a spill-over that keeps Modal containers warm most of the time
   buys a pod. Single-pool targets put everything on their pool. Recurring
   bursts too short for the measured rate to show keep a reserve of warm replicas.
4. Guard: bounds, stabilised scale-down (over a pod's start-up after a lull shorter than
   that), per-tick limits; never below in-flight work; on missing or stale metrics hold the
   last decision (never scale down blind).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from ...config.schema import ControllerPolicy as Params
from ...config.schema import Target
from ..histogram import share_above
from ..capacity import replica_capacity
from ..forecast import RateForecaster
from ..profile import ReplicaProfile
from ..safety import PoolGuard
from ..types import Decision, Observation, Reason

# Online capacity correction: multiplicative decrease on SLO pressure, slow recovery.
CORRECTION_DOWN = 0.93
CORRECTION_UP = 1.01
CORRECTION_RANGE = (0.6, 1.2)
# Measured quantiles cover the last minute: one capacity cut per overload, not one per tick
# it shows; an overload is judged against the lowest warm capacity and highest rate of that
# minute.
METRICS_WINDOW_S = 60.0
MODAL_STABILIZATION_S = 60.0
# Overload while the minute's peak rate would use less than this share of the warm replicas
# is a burst shorter than the rate window; a recurring one raises the reserve by this factor.
BURSTY_BELOW_UTILIZATION = 0.5
BURST_RESERVE_GROWTH = 1.25
# A rate between two scrapes above this multiple of the window's is a burst the window's
# mean averages away (a Poisson count over 15 s at 1 req/s reaches 2x once a day).
SUDDEN_ABOVE_RATE = 2.0
# History kept beyond the season (or the base load's window): a forecast looks up to this far
# ahead of now, one season back.
HISTORY_MARGIN_S = 3600.0
# The token mix moves slowly; per-window means are noisy (a few hundred requests).
MIX_ALPHA = 0.05


def counting_noise(rate: float) -> float:
    """Two standard errors of a rate (req/s) measured as a Poisson count over the window."""
    return 2 * math.sqrt(max(rate, 0.0) / METRICS_WINDOW_S)


class BurstReserve:
    """Warm replicas kept for bursts shorter than the rate window.

    Such bursts average away in the measured rate, and only capacity already warm when one
    starts serves it within the TTFT SLO (a pod takes minutes, a Modal container seconds).
    A burst shows in two ways: the rate between two scrapes well above the window's (then
    the reserve holds what that rate needs), or, for one too short even for that, an
    overload that leaves most warm capacity idle on average. An overload again within
    `memory_s` raises the reserve above the warm capacity that failed. What a burst needed
    halves with each `memory_s` since it was seen, and the reserve is the largest of those: it
    follows bursts down as they shrink, and lapses gradually once they stop.

    A lone sudden burst (one that comes while no reserve is held) still on once capacity
    started for it is ready (`lead_s` after it came) was a level the rate followed: when it
    ends, its need counts a `memory_s` older, so half of it is held, not all (on daily peaks
    30 minutes long and hours apart, the whole need held idle pods for half an hour after each;
    bursts that come while a reserve is held keep it whole: that is what serves the next one).
    """

    def __init__(self, memory_s: float, margin: float, lead_s: float):
        self.memory_s, self.margin = memory_s, margin  # margin: replicas' worth per unit of load
        self.lead_s = lead_s
        self.level = 0
        self.last_burst = -math.inf
        self.lone = True  # the latest burst came while no reserve was held
        # (time, replicas, rate) of past bursts, each needing more than every later one: a
        # later, larger need outlasts an earlier, smaller one. `rate`: the window's rate that
        # shows a lone sudden burst still on (inf for any other: the rate does not follow it).
        self.needs: deque[tuple[float, int, float]] = deque()
        self.recent: deque[tuple[float, int, float, float]] = deque()  # (time, warm, rate, instant)

    def update(self, overload: bool, warm: int, rate: float, instant: float | None,
               capacity: float, now: float) -> int:
        """The reserve, given whether the SLO is under pressure, the replicas held warm, the
        window's rate and the rate between the last two scrapes (None: unknown)."""
        if not self.memory_s:  # turned off
            return 0
        self.recent.append((now, warm, rate, rate if instant is None else instant))
        while self.recent[0][0] < now - METRICS_WINDOW_S:
            self.recent.popleft()
        least_warm = min(w for _, w, _, _ in self.recent)
        peak_rate = max(r for _, _, r, _ in self.recent)
        peak_instant = max(i for _, _, _, i in self.recent)
        sudden = peak_instant > SUDDEN_ABOVE_RATE * peak_rate
        too_short = overload and peak_rate < BURSTY_BELOW_UTILIZATION * least_warm * capacity
        if sudden or too_short:
            self._record(now, overload, least_warm, peak_instant if sudden else None, capacity)
        self.needs = deque(self._following(self.needs, rate, now))
        self.level = max((self._halved(need, since, now) for since, need, _ in self.needs), default=0)
        return self.level

    def _record(self, now: float, overload: bool, least_warm: int, peak_instant: float | None,
                capacity: float) -> None:
        """A burst seen now: sudden (its peak rate between two scrapes given) or too short for
        even that."""
        if now - self.last_burst > METRICS_WINDOW_S:  # a new burst, not this one seen again
            self.lone = self.level == 0
        needed, on_while = 0, math.inf
        if peak_instant is not None:
            needed = math.ceil(peak_instant * self.margin / capacity)
            on_while = peak_instant / SUDDEN_ABOVE_RATE if self.lone else math.inf
        if overload and now - self.last_burst <= self.memory_s:
            grown = max(least_warm + 1, math.ceil(least_warm * BURST_RESERVE_GROWTH))
            if grown > needed:  # warm capacity failed again: the rate does not show it
                needed, on_while = grown, math.inf
        while self.needs and self.needs[-1][1] <= needed:
            self.needs.pop()
        self.needs.append((now, needed, on_while))
        self.last_burst = now

    def _following(self, needs, rate: float, now: float):
        """The needs not lapsed. A lone burst is over once the window's rate, caught up with
        it, falls below `on_while`: if it lasted `lead_s`, its need ages a `memory_s`; if not,
        it was too short for the rate to follow and keeps its need whole."""
        for since, need, on_while in needs:
            age = now - since
            if math.isfinite(on_while) and age >= METRICS_WINDOW_S and rate < on_while:
                if age >= self.lead_s:
                    since -= self.memory_s
                on_while = math.inf
            if self._halved(need, since, now):
                yield since, need, on_while

    def _halved(self, need: int, since: float, now: float) -> int:
        """A burst's need, halved once per `memory_s` since it was seen."""
        return need >> int((now - since) // self.memory_s)


class LullMemory:
    """Lulls shorter than a pod's start-up (on/off traffic: batch clients, gaps of a few
    minutes between bursts). A pod released in one is needed again before a new one could be
    ready, and the new one is billed while it starts: after such a lull, scale-down waits out
    a pod's start-up, for `memory_s`. A lull: the load fell to a quarter of the pods asked
    for or less (not the noise of a small pool); it ends when it is back to three quarters."""

    def __init__(self, short_s: float, memory_s: float):
        self.short_s, self.memory_s = short_s, memory_s
        self.started: float | None = None
        self.last_short = -math.inf

    def update(self, needed: float, asked: int, now: float) -> bool:
        """Whether a short lull was seen within `memory_s`."""
        if needed <= asked / 4:
            self.started = now if self.started is None else self.started
        elif self.started is not None and needed >= 0.75 * asked:
            if now - self.started <= self.short_s:
                self.last_short = now
            self.started = None
        return now - self.last_short <= self.memory_s


class SpillPricing:
    """Pods that replace Modal containers kept warm by spill-over.

    Modal bills a container for its scaledown window after every request it takes. On a small
    pool the queueing noise of the base load spills often enough to keep a container warm
    most of the time, which costs more than another pod, and the rate (a minute's mean) does
    not show it. So the spill itself is priced as the rate is: over the base window, while
    the pods asked for are all ready and the load holds still, the containers Modal runs
    beyond the warm pool asked for are a layer of load; present in at least `1 − quantile` of
    those ticks (often enough for an hourly-billed pod to beat per-second billing), it moves
    onto one more pod. That pod stops the spill that justified it, so it is kept until the
    base load falls clearly (by the hysteresis and twice its counting noise) below the rate
    it was learnt at; the spill is measured afresh from then on.
    """

    def __init__(self, window_s: float, quantile: float, hysteresis: float, tick_s: float):
        self.window_s, self.quantile, self.hysteresis = window_s, quantile, hysteresis
        self.least_samples = window_s / 2 / tick_s
        self.spilled: deque[tuple[float, int]] = deque()
        self.pods, self.release_below = 0, 0.0

    def update(self, now: float, spilled: int | None, pods: int, base: float, capacity: float, rising: float) -> int:
        """The pods the spill justifies (0: none), given the containers Modal runs beyond the
        warm pool asked for (None while pods start: then Modal covers for them by design)
        and the base load (requests/s)."""
        if base <= self.release_below or base > (self.pods - 1) * capacity * (1 + self.hysteresis):
            self.pods, self.release_below = 0, 0.0  # fallen, or the rate asks for them anyway
        if spilled is None or rising or math.ceil(base / capacity) > pods:  # a moving load is the rate's
            self.spilled.clear()
            return self.pods
        self.spilled.append((now, spilled))
        while self.spilled[0][0] < now - self.window_s:
            self.spilled.popleft()
        if len(self.spilled) >= self.least_samples:
            layers = sorted(n for _, n in self.spilled)[int(self.quantile * len(self.spilled))]
            if layers:
                self.pods = pods + 1
                self.release_below = base * (1 - self.hysteresis) - counting_noise(base)
                self.spilled.clear()
        return self.pods


class ErrorBudget:
    """How fast the TTFT error budget burns over the last `window_s`: the share of requests
    over the SLO divided by the share allowed (1 = exactly on budget)."""

    def __init__(self, window_s: float, allowed: float):
        self.window_s, self.allowed = window_s, allowed
        self.recent: deque[tuple[float, float, float]] = deque()  # (time, requests, late)
        self.requests = self.late = 0.0

    def update(self, now: float, requests: float, late: float) -> float:
        self.recent.append((now, requests, late))
        self.requests += requests
        self.late += late
        while self.recent[0][0] < now - self.window_s:
            _, requests, late = self.recent.popleft()
            self.requests -= requests
            self.late -= late
        return self.late / self.requests / self.allowed if self.requests > 0 else 0.0


class ControllerPolicy:
    name = "controller"

    def __init__(self, target: Target, tick_s: float, profile: ReplicaProfile):
        self.target = target
        self.profile = profile
        self.p: Params = target.policy.controller
        p = self.p
        self.tick_s = tick_s
        self.forecaster = RateForecaster(
            tick_s, p.level_alpha, p.trend_beta, p.error_alpha, p.band_z, p.season_seconds,
            history_s=max(p.season_seconds, p.base_load_window_seconds) + HISTORY_MARGIN_S,
        )
        self.prompt_mean = 1000.0
        self.output_mean = 200.0
        self.correction = 1.0
        self.last_cut = -math.inf
        k8s, modal = target.kubernetes_pool, target.modal_pool
        # Lead times: how far ahead capacity asked for now is ready (worst start-up + a tick).
        self.k8s_lead_s = k8s.startup_seconds.high + tick_s if k8s else None
        self.modal_lead_s = modal.startup.high + tick_s if modal else None
        # The reserve's replicas are the primary pool's: pods when there are any.
        self.burst_reserve = BurstReserve(
            p.burst_memory_seconds, self._replicas_worth(1.0, 1.0), self.k8s_lead_s or self.modal_lead_s
        )
        self.error_budget = ErrorBudget(p.error_budget_window_seconds, 1 - target.slo.attainment)
        self.last: Decision | None = None
        self.k8s_guard = k8s and PoolGuard(
            k8s.min_replicas, k8s.max_replicas, p.scale_down_stabilization_seconds,
            p.max_scale_up_per_tick, p.max_scale_down_per_tick, p.hysteresis,
        )  # fmt: skip
        self.lulls = k8s and LullMemory(self.k8s_lead_s, p.burst_memory_seconds)
        self.modal_guard = modal and PoolGuard(
            modal.min_containers, modal.max_containers, MODAL_STABILIZATION_S,
            p.max_scale_up_per_tick, p.max_scale_down_per_tick, 0.0,
        )  # fmt: skip
        self.base_quantile = p.base_load_quantile
        if self.base_quantile is None and k8s and modal:
            k8s_per_s = k8s.price_per_gpu_hour * k8s.gpus_per_replica / 3600
            self.base_quantile = 1 - min(k8s_per_s / modal.price_per_container_second, 1.0)
        self.spill = k8s and modal and SpillPricing(
            p.base_load_window_seconds, self.base_quantile, p.hysteresis, tick_s
        )

    @property
    def memory_seconds(self) -> float:
        """How far back the policy's windows and forecast look."""
        return max(self.forecaster.history_s, self.p.error_budget_window_seconds)

    def recall(self, history: Sequence[Observation]) -> None:
        """Learn from the observations of before the start, oldest first, as if this policy
        had seen them: the forecast (level, trend, a day of history for the seasonal term,
        the base load's window), the token mix and the error budget. Without them a restart
        (a deploy, a crash) would forget the daily pattern for a day. No decision is made
        and the guards keep no recommendation from them: what runs now is the start."""
        for observation in history:
            at = observation.time
            rate = self._learn(observation, at)
            if rate is not None:
                self.error_budget.update(at, rate, rate * self._late_share(observation, at))

    # ---- inputs --------------------------------------------------------------------------
    def _fresh(self, obs: Observation, name: str, now: float) -> float | None:
        return getattr(obs, name).fresh(now, self.p.stale_after_seconds)

    def _learn(self, obs: Observation, now: float) -> float | None:
        """Update forecast and token mix; the measured rate, or None when it is unusable."""
        rate = self._fresh(obs, "arrival_rate", now)
        if rate is None or not math.isfinite(rate) or rate < 0:
            return None
        self.forecaster.update(rate, now)
        prompt_rate = self._fresh(obs, "prompt_tokens_rate", now)
        output_rate = self._fresh(obs, "output_tokens_rate", now)
        if rate > 0 and prompt_rate and output_rate:
            self.prompt_mean += MIX_ALPHA * (prompt_rate / rate - self.prompt_mean)
            self.output_mean += MIX_ALPHA * (output_rate / rate - self.output_mean)
        return rate

    def _late_share(self, obs: Observation, now: float) -> float:
        """Share of the window's requests slower than the SLO (0 when not measured)."""
        threshold = self.target.slo.ttft_seconds * self.p.ttft_feedback_fraction
        buckets = self._fresh(obs, "ttft_buckets", now)
        return (buckets and share_above(threshold, dict(buckets))) or 0.0

    def _pressure(self, obs: Observation, now: float, late: float, burn: float, waiting: float,
                  backlog: int, excess: float, ready: int) -> tuple[str | None, float]:
        """Which measured signal is above its target, if any, and the factor it cuts the
        capacity estimate by."""
        kv = self._fresh(obs, "kv_usage_mean", now)
        allowed = 1 - self.target.slo.attainment
        # Queueing spikes a right-sized pool has anyway stay within the budget: only a fast
        # burn, or one that has spent the budget of the whole window, calls for capacity.
        if late > allowed and (late >= self.p.fast_burn * allowed or burn >= 1):
            why = f"{late:.1%} of requests over the TTFT SLO (error budget burn {burn:.1f}x)"
            return why, CORRECTION_DOWN
        if excess > 0:
            return f"{waiting:.0f} requests waiting, {backlog} queued at Modal", CORRECTION_DOWN
        # A full cache only hurts when it keeps requests waiting. It warns of lateness to come
        # (on a few pods, a minute ahead) but is no miss: it cuts by one replica's share at
        # most, about a pod more per minute; on 45 pods 7% asked for 3, and a few waiting among
        # 45 replicas is routine.
        if kv is not None and kv > self.p.kv_usage_target and waiting:
            one_replica = 1 - 1 / max(ready, 1)
            return f"KV cache {kv:.0%} full with {waiting:.0f} waiting", max(CORRECTION_DOWN, one_replica)
        return None, 1.0

    # ---- the decision --------------------------------------------------------------------
    def decide(self, observation: Observation, now: float) -> Decision:
        rate = self._learn(observation, now)
        if rate is None:
            return self._hold(observation, "arrival rate missing or stale: holding, no scale-down")
        k8s_ready = observation.kubernetes.ready if observation.kubernetes else 0
        modal_ready = observation.modal.ready if observation.modal else 0
        ready = k8s_ready + modal_ready
        late = self._late_share(observation, now)
        burn = self.error_budget.update(now, rate, rate * late)
        # Requests waiting in vLLM beyond the few a busy replica holds between two steps are
        # load the pools failed to take, and so is every input queued at Modal: it waits for a
        # container to start. Both are cleared by capacity on top of the forecast (so it
        # vanishes once they drain). Only a queue beyond the tolerance is pressure: a stray
        # spill while every pod was mid-step is no shortage.
        waiting = self._fresh(observation, "waiting", now) or 0.0
        backlog = (observation.modal.backlog or 0) if observation.modal else 0
        tolerated = self.p.waiting_per_replica_target * ready
        backlog_rate = (max(waiting - tolerated, 0.0) + backlog) / self.target.slo.ttft_seconds
        excess = waiting + backlog - max(tolerated, self.p.waiting_per_replica_target)
        pressure, cut = self._pressure(observation, now, late, burn, waiting, backlog, excess, ready)
        self._correct(pressure, now, self._capacity_arriving(observation), cut)
        capacity = self._capacity()
        if capacity <= 0:
            return self._hold(observation, "SLO unreachable with this profile: holding")
        in_flight = self._fresh(observation, "running", now) or 0.0
        floor = math.ceil(in_flight / self.profile.max_num_seqs)  # never below in-flight work
        details: dict = {
            "rate": rate, "capacity_per_replica": capacity, "correction": self.correction,
            "pressure": pressure, "backlog_rate": backlog_rate, "late_share": late,
            "error_budget_burn": burn,
        }  # fmt: skip
        # The capacity held warm on purpose: ready pods, or for Modal alone its warm minimum
        # (containers Modal starts on demand come up seconds after the burst that needed them).
        if self.target.kubernetes_pool:
            held_warm = k8s_ready
        else:
            held_warm = min(modal_ready, observation.modal.desired) if observation.modal else 0
        instant = self._fresh(observation, "arrival_rate_instant", now)
        reserve = self.burst_reserve.update(bool(pressure), held_warm, rate, instant, capacity, now)
        floor = max(floor, reserve)
        details["burst_reserve"] = reserve
        asked = observation.kubernetes.desired if observation.kubernetes else 0
        spilled = self._spilled(observation)
        k8s = self._plan_kubernetes(now, capacity, floor, backlog_rate, details, asked, spilled)
        k8s_pods = (k8s_ready, max(k8s or 0, k8s_ready))
        modal_min, modal_buffer = self._plan_modal(now, capacity, k8s_pods, floor, backlog_rate, details)
        if pressure and k8s is not None and observation.kubernetes:
            k8s = max(k8s, observation.kubernetes.desired)  # never shrink while short of capacity
        k8s, modal_min = self._guard(observation, now, k8s, modal_min, details)
        summary = f"{rate:.2f} req/s, {capacity:.2f}/replica;" + (
            f" k8s {k8s}" if k8s is not None else ""
        ) + (f" modal min {modal_min} buffer {modal_buffer}" if modal_min is not None else "") + (
            f" ({pressure})" if pressure else ""
        )  # fmt: skip
        reason = Reason("pressure" if pressure else "forecast", summary, details)
        self.last = Decision(k8s, modal_min, modal_buffer, reason)
        return self.last

    def _spilled(self, obs: Observation) -> int | None:
        """Containers Modal runs beyond the warm pool last asked for, once every pod asked
        for is ready (None before: Modal then covers for pods still starting)."""
        pods = obs.kubernetes
        if not (self.spill and pods and obs.modal and self.last) or pods.ready < pods.desired:
            return None
        warm_pool = (self.last.modal_min_containers or 0) + (self.last.modal_buffer_containers or 0)
        return max(obs.modal.total - warm_pool, 0)

    def _plan_kubernetes(self, now, capacity, floor, backlog_rate, details, asked, spilled) -> int | None:
        k8s = self.target.kubernetes_pool
        if not k8s:
            return None
        lead = self.k8s_lead_s
        band = self.forecaster.forecast(now, lead)
        details.update(k8s_forecast=band.point, k8s_upper=band.upper)
        rising = self.forecaster.significant_trend() * lead / capacity  # replicas' worth the trend adds
        tolerance = self._tolerance(asked, details["rate"], capacity, details["pressure"])
        if not self.target.modal_pool:  # alone: carry the whole upper band within the SLO
            needed = self._replicas_worth(band.upper + backlog_rate, capacity)
            return max(self._tolerate(needed, asked, rising, tolerance), floor)
        # Hybrid: the base layer — load present often enough that an hourly-billed pod beats
        # per-second Modal; what exceeds the pods spills over to Modal. A Modal container
        # stays billed for its scaledown window after each use, so a layer counts as present
        # whenever it was needed within that window.
        hold = self.target.modal_pool.scaledown_window_seconds
        base = self.forecaster.recent_quantile(
            now, self.p.base_load_window_seconds, self.base_quantile, hold
        )
        base = min(base, band.upper)
        spill_pods = self.spill.update(now, spilled, asked, base, capacity, rising)
        details.update(k8s_base_rate=base, spill_pods=spill_pods)
        return max(self._tolerate(base / capacity, asked, rising, tolerance), self.burst_reserve.level, spill_pods)

    def _plan_modal(self, now, capacity, k8s, floor, backlog_rate, details):
        """Warm containers Modal's own request-driven scaling would be too late for; the
        pool's `buffer_containers` is a floor on the buffer (idle containers bought ahead of
        sudden bursts, which only capacity already warm serves within the TTFT SLO)."""
        modal = self.target.modal_pool
        if not modal:
            return None, None
        band = self.forecaster.forecast(now, self.modal_lead_s)
        details.update(modal_forecast=band.point, modal_upper=band.upper)
        # Queued requests wait for the containers asked for to start anyway: drain them over
        # a start-up and the SLO, not the SLO alone (each container beyond that is billed for
        # a scaledown window at least, long after the queue is gone).
        ttft = self.target.slo.ttft_seconds
        drain = backlog_rate * ttft / (ttft + modal.startup.high)
        if self.target.kubernetes_pool:
            # Spill-over beyond the pods is absorbed by Modal's autoscaler within seconds;
            # warm up front only the load that pods still starting will carry later, and the
            # burst reserve's pods still starting (a burst does not wait minutes for them).
            ready, desired = k8s
            gap = max(min(band.point, desired * capacity) - ready * capacity, 0.0) + drain
            # The pods asked for include the reserve already (it is their floor).
            reserve = min(self.burst_reserve.level, self.target.kubernetes_pool.max_replicas)
            details.update(modal_gap_rate=gap, reserve_starting=max(reserve - ready, 0))
            return max(self._replicas(gap, capacity), reserve - ready), modal.buffer_containers
        wanted = max(self._replicas(band.point + drain, capacity), floor)
        spread = self._replicas(band.upper, capacity) - self._replicas(band.point, capacity)
        return wanted, max(math.ceil(self.p.modal_buffer_fraction * spread), modal.buffer_containers)

    def _guard(self, observation: Observation, now: float, k8s, modal_min, details: dict):
        if self.k8s_guard and k8s is not None:
            current = observation.kubernetes.desired if observation.kubernetes else k8s
            window = self.p.scale_down_stabilization_seconds
            if self.lulls.update(k8s, current, now):
                window = max(window, self.lulls.short_s)
            self.k8s_guard.stabilization_s = details["k8s_scale_down_window_s"] = window
            k8s = self.k8s_guard.apply(k8s, current, now)
        if self.modal_guard and modal_min is not None:
            last = self.last.modal_min_containers if self.last else None
            modal_min = self.modal_guard.apply(modal_min, modal_min if last is None else last, now)
        return k8s, modal_min

    def _replicas_worth(self, rate: float, capacity: float) -> float:
        return rate * (1 + self.p.headroom) / (capacity * self.p.target_utilization)

    def _replicas(self, rate: float, capacity: float) -> int:
        return math.ceil(self._replicas_worth(rate, capacity))

    def _tolerance(self, asked: int, rate: float, capacity: float, pressure: str | None) -> float:
        """Replicas' worth a rise may stay within and keep the pods asked for: as the HPA's
        tolerance, `hysteresis` of them, for the sampling noise of the measured rate (the
        capacity per replica is sized for Poisson arrivals already; with Modal beside the pods
        it takes the excess within seconds), and a pod started for it arrives minutes later.
        Under pressure the pods are proven short and the rise is the capacity correction's:
        only the rate's own noise is tolerated. (Above ten pods 10% is more than a pod: the
        pool stayed short, the next cut a minute later overshot by one, and the recovered
        estimate released both.)"""
        tolerance = self.p.hysteresis * asked
        return min(tolerance, counting_noise(rate) / capacity) if pressure else tolerance

    def _tolerate(self, needed: float, asked: int, rising: float, tolerance: float) -> int:
        """Pods for `needed` replicas' worth: a rise within `tolerance` keeps the pods asked
        for, but not on a ramp (the trend alone adds `rising` replicas' worth over a pod's lead
        time, as much as the tolerance): there every rise is load."""
        pods = math.ceil(needed)
        if pods > asked and needed <= asked + tolerance and rising < tolerance:
            return asked
        return pods

    def _capacity(self) -> float:
        """Requests/s one replica serves within the SLO at the current token mix, corrected."""
        slo = self.target.slo
        prompt, output = round(self.prompt_mean, -1), round(self.output_mean, -1)
        return replica_capacity(self.profile, slo.ttft_seconds, slo.itl_seconds, prompt, output) * self.correction

    def _capacity_arriving(self, obs: Observation) -> bool:
        """Inputs waiting for Modal containers to start, or pods still starting while Modal
        covers for them (on Kubernetes alone nothing covers: that shortfall is pressure)."""
        pods, modal = obs.kubernetes, obs.modal
        covered = bool(self.target.modal_pool and pods and pods.ready < pods.desired)
        return covered or bool(modal and modal.backlog)

    def _correct(self, pressure: str | None, now: float, arriving: bool, cut: float) -> None:
        """Cut the capacity estimate by `cut` on pressure, unless capacity asked for is still
        arriving (the estimate is only proven wrong once what it asked for is there); recover
        without."""
        low, high = CORRECTION_RANGE
        if pressure and not arriving:
            if now - self.last_cut >= METRICS_WINDOW_S:
                self.correction = max(self.correction * cut, low)
                self.last_cut = now
        elif not pressure:
            self.correction = min(self.correction * CORRECTION_UP, high)

    def _hold(self, observation: Observation, why: str) -> Decision:
        """Keep the last decision (or the current capacity) rather than act blind."""
        if self.last is not None:
            last = self.last
        else:
            k8s, modal = observation.kubernetes, observation.modal
            last = Decision(
                k8s.desired if k8s and self.target.kubernetes_pool else None,
                modal.desired if modal and self.target.modal_pool else None,
                None, Reason("hold", why),
            )  # fmt: skip
        # A held value counts as recommended: after an outage, scale-down still waits for a
        # full stabilisation window of fresh recommendations.
        now = observation.time
        if self.k8s_guard and last.kubernetes_replicas is not None:
            self.k8s_guard.remember(last.kubernetes_replicas, now)
        if self.modal_guard and last.modal_min_containers is not None:
            self.modal_guard.remember(last.modal_min_containers, now)
        return Decision(
            last.kubernetes_replicas, last.modal_min_containers, last.modal_buffer_containers,
            Reason("hold", why, {"held_from": last.reason.summary}),
        )  # fmt: skip
