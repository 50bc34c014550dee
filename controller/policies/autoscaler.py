"""The product's policy (`controller`): forecast, capacity model, hybrid cost planner, safety.

Each tick:
1. Forecast the arrival rate over each pool's lead time (Kubernetes: pod start-up; Modal:
   container start-up), with an upper band; the token mix from the measured token rates.
2. Capacity of one replica within the SLO from the replica profile, scaled by an online
   correction learnt from measured TTFT, waiting requests and KV usage.
3. Plan: Kubernetes (cheap per hour, slow) carries the base load that will still be there
   when a new pod is ready — the load level present often enough that an hourly-billed pod
   beats per-second Modal billing; Modal warm containers cover the rest of the band and
   the gap while pods start. Single-pool targets put everything on their pool.
4. Guard: bounds, stabilised scale-down, per-tick limits; never below in-flight work; on
   missing or stale metrics hold the last decision (never scale down blind).
"""

from __future__ import annotations

import math

from ...config.schema import ControllerPolicy as Params
from ...config.schema import Target
from ..capacity import replica_capacity
from ..forecast import RateForecaster
from ..profile import ReplicaProfile
from ..safety import PoolGuard
from ..types import Decision, Observation, Reason

# Online capacity correction: multiplicative decrease on SLO pressure, slow recovery.
CORRECTION_DOWN = 0.93
CORRECTION_UP = 1.01
CORRECTION_RANGE = (0.6, 1.1)
MODAL_STABILIZATION_S = 60.0


class ControllerPolicy:
    name = "controller"

    def __init__(self, target: Target, tick_s: float, profile: ReplicaProfile):
        self.target = target
        self.profile = profile
        self.p: Params = target.policy.controller
        p = self.p
        self.tick_s = tick_s
        self.forecaster = RateForecaster(
            tick_s, p.level_alpha, p.trend_beta, p.error_alpha, p.band_z
        )
        self.prompt_mean = 1000.0
        self.output_mean = 200.0
        self.correction = 1.0
        self.last: Decision | None = None
        k8s, modal = target.kubernetes_pool, target.modal_pool
        self.k8s_guard = k8s and PoolGuard(
            k8s.min_replicas, k8s.max_replicas, p.scale_down_stabilization_seconds,
            p.max_scale_up_per_tick, p.max_scale_down_per_tick, p.hysteresis,
        )  # fmt: skip
        self.modal_guard = modal and PoolGuard(
            modal.min_containers, modal.max_containers, MODAL_STABILIZATION_S,
            p.max_scale_up_per_tick, p.max_scale_down_per_tick, 0.0,
        )  # fmt: skip
        # Kubernetes carries a load level when it is present at least this share of the time.
        self.k8s_share = 1.0
        if k8s and modal:
            k8s_per_s = k8s.price_per_gpu_hour * k8s.gpus_per_replica / 3600
            self.k8s_share = min(k8s_per_s / modal.price_per_container_second, 1.0)

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
            self.prompt_mean += 0.2 * (prompt_rate / rate - self.prompt_mean)
            self.output_mean += 0.2 * (output_rate / rate - self.output_mean)
        return rate

    def _pressure(self, obs: Observation, now: float, replicas: int) -> str | None:
        """Which measured signal is above its target, if any."""
        slo = self.target.slo
        ttft = self._fresh(obs, "ttft_p99", now)
        waiting = self._fresh(obs, "waiting", now)
        kv = self._fresh(obs, "kv_usage_mean", now)
        if ttft is not None and ttft > slo.ttft_seconds * self.p.ttft_feedback_fraction:
            return f"TTFT p99 {ttft:.2f}s above {self.p.ttft_feedback_fraction:.0%} of SLO"
        if waiting is not None and waiting > self.p.waiting_per_replica_target * max(replicas, 1):
            return f"{waiting:.0f} requests waiting"
        # A full cache only hurts when it keeps requests waiting.
        if kv is not None and kv > self.p.kv_usage_target and waiting:
            return f"KV cache {kv:.0%} full with {waiting:.0f} waiting"
        return None

    # ---- the decision --------------------------------------------------------------------
    def decide(self, observation: Observation, now: float) -> Decision:
        rate = self._learn(observation, now)
        if rate is None:
            return self._hold(observation, "arrival rate missing or stale: holding, no scale-down")
        k8s_state, modal_state = observation.kubernetes, observation.modal
        k8s_ready = k8s_state.ready if k8s_state else 0
        modal_ready = modal_state.ready if modal_state else 0
        pressure = self._pressure(observation, now, k8s_ready + modal_ready)
        self._correct(pressure, observation, now)
        capacity = self._capacity()
        if capacity <= 0:
            return self._hold(observation, "SLO unreachable with this profile: holding")
        k8s_cfg, modal_cfg = self.target.kubernetes_pool, self.target.modal_pool
        details: dict = {"rate": rate, "capacity_per_replica": capacity, "correction": self.correction}

        in_flight = self._fresh(observation, "running", now) or 0.0
        floor = math.ceil(in_flight / self.profile.max_num_seqs)

        k8s_want = None
        if k8s_cfg:
            lead = k8s_cfg.startup_seconds.high + self.tick_s
            band = self.forecaster.forecast(now, lead)
            if modal_cfg:
                # The base layer: spill-over to Modal keeps these pods full, so no headroom.
                base = min(
                    self.forecaster.recent_quantile(now, self.p.base_load_window_seconds, 1 - self.k8s_share),
                    band.point,
                )
                k8s_want = round(base / capacity)
            else:
                k8s_want = max(self._replicas(band.upper, capacity), floor)
            details.update(k8s_forecast=band.point, k8s_upper=band.upper)

        modal_min = modal_buffer = None
        if modal_cfg:
            lead = modal_cfg.startup.high + self.tick_s
            band = self.forecaster.forecast(now, lead)
            total = max(self._replicas(band.point, capacity), floor)
            modal_min = max(total - k8s_ready, 0)
            spread = self._replicas(band.upper, capacity) - self._replicas(band.point, capacity)
            modal_buffer = math.ceil(self.p.modal_buffer_fraction * spread)
            details.update(modal_forecast=band.point, modal_upper=band.upper)

        if self.k8s_guard and k8s_want is not None:
            current = k8s_state.desired if k8s_state else k8s_want
            k8s_want = self.k8s_guard.apply(k8s_want, current, now)
        if self.modal_guard and modal_min is not None:
            current = self.last.modal_min_containers if self.last and self.last.modal_min_containers is not None else modal_min
            modal_min = self.modal_guard.apply(modal_min, current, now)

        driver = "pressure" if pressure else "forecast"
        summary = (
            f"{rate:.2f} req/s, {capacity:.2f}/replica; "
            + (f"k8s {k8s_want}" if k8s_want is not None else "")
            + (f" modal min {modal_min} buffer {modal_buffer}" if modal_min is not None else "")
            + (f" ({pressure})" if pressure else "")
        )
        details["pressure"] = pressure
        self.last = Decision(k8s_want, modal_min, modal_buffer, Reason(driver, summary.strip(), details))
        return self.last

    def _replicas(self, rate: float, capacity: float) -> int:
        return math.ceil(rate * (1 + self.p.headroom) / (capacity * self.p.target_utilization))

    def _capacity(self) -> float:
        slo = self.target.slo
        base = replica_capacity(
            self.profile, slo.ttft_seconds, slo.itl_seconds,
            round(self.prompt_mean, -1), round(self.output_mean, -1),
        )  # fmt: skip
        return base * self.correction

    def _correct(self, pressure: str | None, obs: Observation, now: float) -> None:
        low, high = CORRECTION_RANGE
        if pressure:
            self.correction = max(self.correction * CORRECTION_DOWN, low)
        else:
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
        return Decision(
            last.kubernetes_replicas, last.modal_min_containers, last.modal_buffer_containers,
            Reason("hold", why, {"held_from": last.reason.summary}),
        )  # fmt: skip
