"""The `hpa` baseline: the Kubernetes HorizontalPodAutoscaler (autoscaling/v2) on one vLLM metric.

As kube-controller-manager's podautoscaler does it (horizontal.go, replica_calculator.go):

1. currentReplicas is the Deployment's spec.replicas (`PoolState.desired`); outside
   [min, max] it is clamped to the bounds and nothing else is done.
2. The metric's per-pod average over the pods reporting it, against the target:
   desired = ceil(ratio * pods), no change within the tolerance. Ready pods without a value
   count at the target on a scale-down and at 0 on a scale-up; not-yet-ready (starting) pods
   count at 0 on a scale-up and are ignored otherwise; if these assumptions bring the ratio
   within tolerance or reverse the direction, nothing changes. No metric: no change.
3. Stabilisation: the highest recommendation of the scale-down window and the lowest of the
   scale-up window bound the result (the first recommendation is the starting replica count).
4. Behaviour: per period, scale up by at most max(percent, pods) and down by at most percent
   of the replicas at the period's start (selectPolicy Max), within [min, max].

Only the Kubernetes pool is scaled; Modal keeps its configured min/buffer containers.
vLLM aggregates are summed over every replica reporting (both pools), so the per-pod average
is that sum over `replicas_reporting`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ...config.schema import HpaPolicy as Params
from ...config.schema import Target
from ..types import Decision, Observation, PoolState, Reason

# ceil() of a ratio times a count must not jump a replica on float noise (2.0000000000000004).
CEIL_EPSILON = 1e-9


# A tick that lands a hair before the sync period (float sums of tick times) still syncs.
SYNC_SLACK_S = 1e-6


def _ceil(x: float) -> int:
    return math.ceil(x - CEIL_EPSILON)


def metric_replicas(average: float, target: float, with_metrics: int, missing: int,
                    unready: int, current: int, tolerance: float) -> int:  # fmt: skip
    """replica_calculator.go's calcPlainMetricReplicas on a per-pod average."""
    ratio = average / target
    scale_up_with_unready = unready > 0 and ratio > 1
    if not scale_up_with_unready and not missing:
        return current if abs(1 - ratio) <= tolerance else _ceil(ratio * with_metrics)
    total, pods = average * with_metrics, with_metrics + missing
    if ratio < 1:
        total += missing * target  # missing pods at the target on a scale-down (0 on a scale-up)
    if scale_up_with_unready:
        pods += unready
    new_ratio = total / (pods * target)
    if abs(1 - new_ratio) <= tolerance or (ratio < 1 < new_ratio) or (ratio > 1 > new_ratio):
        return current
    return _ceil(new_ratio * pods)


@dataclass(frozen=True, slots=True)
class _Timed:
    at: float
    value: int


class HpaPolicy:
    name = "hpa"

    def __init__(self, target: Target, tick_seconds: float):
        if not tick_seconds > 0:
            raise ValueError(f"tick_seconds must be > 0, got {tick_seconds}")
        self.p: Params = target.policy.hpa
        if self.p.metric == "kv_usage" and self.p.target_average > 1:
            raise ValueError(
                f"policy.hpa.target_average for metric kv_usage is a fraction of the KV cache "
                f"(0..1], got {self.p.target_average}"
            )
        self.pool = target.kubernetes_pool
        modal = target.modal_pool
        self.modal_min = modal.min_containers if modal else None
        self.modal_buffer = modal.buffer_containers if modal else None
        # The HPA API needs minReplicas >= 1 for pod metrics (scale to zero is alpha).
        self.min = max(self.pool.min_replicas, 1) if self.pool else 0
        self.max = self.pool.max_replicas if self.pool else 0
        self.sync_period_s = tick_seconds
        self.recommendations: deque[_Timed] = deque()
        self.scale_ups: deque[_Timed] = deque()
        self.scale_downs: deque[_Timed] = deque()
        self.last: Decision | None = None
        self.next_sync = -math.inf

    def decide(self, observation: Observation, now: float) -> Decision:
        # The controller manager syncs each HPA once per period; calls in between repeat it.
        if now >= self.next_sync:
            self.last = self._reconcile(observation, now)
            self.next_sync = now + self.sync_period_s - SYNC_SLACK_S
        return self.last

    def _decision(self, replicas: int | None, summary: str, **details) -> Decision:
        return Decision(replicas, self.modal_min, self.modal_buffer,
                        Reason("hpa", summary, {"metric": self.p.metric, **details}))  # fmt: skip

    def _reconcile(self, obs: Observation, now: float) -> Decision:
        pods = obs.kubernetes
        if self.pool is None:
            return self._decision(None, "no Kubernetes pool to scale")
        if pods is None:
            return self._decision(None, "Kubernetes pool state unknown: leave it as it is")
        current = pods.desired
        if not self.recommendations:
            self.recommendations.append(_Timed(now, current))
        if not self.min <= current <= self.max:
            bounded = min(max(current, self.min), self.max)
            self._record_scale(now, current, bounded)
            return self._decision(bounded, f"{current} replicas outside [{self.min}, {self.max}]: {bounded}",
                                  current=current, desired=bounded)  # fmt: skip
        average, with_metrics = self._average(obs, pods)
        if average is None:
            return self._decision(current, f"no {self.p.metric} metric from the pods: hold {current}",
                                  current=current)  # fmt: skip
        recommended = metric_replicas(average, self.p.target_average, with_metrics,
                                      pods.ready - with_metrics, pods.starting, current,
                                      self.p.tolerance)  # fmt: skip
        stabilized = self._stabilize(now, current, recommended)
        desired, limit = self._limit_rate(now, current, stabilized)
        self._record_scale(now, current, desired)
        ratio = average / self.p.target_average
        summary = (f"{self.p.metric} {average:.3g}/pod vs target {self.p.target_average:g} "
                   f"(ratio {ratio:.2f}): {current} -> {desired} replicas{limit}")  # fmt: skip
        return self._decision(desired, summary, average=average, target=self.p.target_average,
                              ratio=ratio, current=current, recommended=recommended,
                              stabilized=stabilized, desired=desired)  # fmt: skip

    def _average(self, obs: Observation, pods: PoolState) -> tuple[float | None, int]:
        """The per-pod average and how many ready Kubernetes pods it stands for."""
        reporting = obs.replicas_reporting.value
        reporting = pods.ready if reporting is None else int(reporting)
        total = self._total(obs, reporting)
        if total is None or reporting <= 0 or pods.ready <= 0:
            return None, 0
        return total / reporting, min(reporting, pods.ready)

    def _total(self, obs: Observation, reporting: int) -> float | None:
        """The metric summed over the reporting replicas; None when missing."""
        running, waiting, kv_usage = obs.running.value, obs.waiting.value, obs.kv_usage_mean.value
        if self.p.metric == "running":
            return running
        if self.p.metric == "waiting":
            return waiting
        if self.p.metric == "kv_usage":  # a mean over the replicas
            return None if kv_usage is None else kv_usage * reporting
        return None if running is None or waiting is None else running + waiting

    def _stabilize(self, now: float, current: int, recommended: int) -> int:
        """Bound the recommendation by the lowest of the scale-up window and the highest of
        the scale-down window, both including it; then remember it."""
        up_cutoff = now - self.p.scale_up_stabilization_seconds
        down_cutoff = now - self.p.scale_down_stabilization_seconds
        lowest = min([recommended, *(r.value for r in self.recommendations if r.at > up_cutoff)])
        highest = max([recommended, *(r.value for r in self.recommendations if r.at > down_cutoff)])
        while self.recommendations and self.recommendations[0].at <= min(up_cutoff, down_cutoff):
            self.recommendations.popleft()
        self.recommendations.append(_Timed(now, recommended))
        return min(max(current, lowest), highest)

    def _changed_in_period(self, events: deque[_Timed], now: float) -> int:
        return sum(e.value for e in events if e.at > now - self.p.policy_period_seconds)

    def _limit_rate(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """The desired count within the behaviour policies and [min, max], and why it was cut."""
        added = self._changed_in_period(self.scale_ups, now)
        start = current - added + self._changed_in_period(self.scale_downs, now)
        if desired > current:
            by_percent = _ceil(start * (1 + self.p.scale_up_percent / 100))
            up_limit = max(by_percent, start + self.p.scale_up_pods)
            allowed = min(max(up_limit, current), self.max)
            if desired > allowed:
                return allowed, " (scale-up limit)" if allowed < self.max else " (max replicas)"
        elif desired < current:
            down_limit = int(start * (1 - self.p.scale_down_percent / 100))
            allowed = max(min(down_limit, current), self.min)
            if desired < allowed:
                return allowed, " (scale-down limit)" if allowed > self.min else " (min replicas)"
        return desired, ""

    def _record_scale(self, now: float, current: int, desired: int) -> None:
        if desired != current:
            events = self.scale_ups if desired > current else self.scale_downs
            events.append(_Timed(now, abs(desired - current)))
        for events in (self.scale_ups, self.scale_downs):
            while events and events[0].at <= now - self.p.policy_period_seconds:
                events.popleft()
