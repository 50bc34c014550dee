"""Policies that read the trace itself: `oracle` (sees the future) and `static-peak`.

Both size capacity from the trace's demand per window and the capacity model: how many
replicas the load of each window needs to stay within the SLO.
"""

from __future__ import annotations

import math

import numpy as np

from ..config.schema import Target
from ..controller.capacity import replica_capacity
from ..controller.profile import ReplicaProfile
from ..controller.types import Decision, Observation, Reason
from .traces import Trace

DEMAND_WINDOW_S = 60.0


def replicas_needed(
    trace: Trace, target: Target, profile: ReplicaProfile, window_s: float = DEMAND_WINDOW_S
) -> np.ndarray:
    """Replicas the load of each `window_s` window needs (index k covers [k·w, (k+1)·w))."""
    slots = int(trace.duration_s // window_s) + 1
    index = (trace.arrival_s // window_s).astype(np.int64)
    count = np.bincount(index, minlength=slots)
    prompt = np.bincount(index, weights=trace.prompt_tokens, minlength=slots)
    output = np.bincount(index, weights=trace.output_tokens, minlength=slots)
    need = np.zeros(slots, dtype=np.int64)
    slo = target.slo
    for k in np.flatnonzero(count):
        capacity = replica_capacity(
            profile, slo.ttft_seconds, slo.itl_seconds,
            round(prompt[k] / count[k], -1), round(output[k] / count[k], -1),
        )  # fmt: skip
        need[k] = math.ceil(count[k] / window_s / capacity) if capacity > 0 else 10**6
    return need


class OraclePolicy:
    """Provisions each pool just in time for the future load, given its start-up delay.

    Kubernetes pods are started one worst-case start-up ahead of the load they serve; Modal
    covers what Kubernetes does not, warmed one Modal start-up ahead. In a hybrid target a
    Kubernetes replica is kept for a layer of load only when that layer is busy for more
    than the price ratio of the coming hour (else Modal's per-second billing is cheaper).
    A reference with perfect foresight, not a proven lower bound.
    """

    name = "oracle"

    def __init__(self, target: Target, profile: ReplicaProfile, trace: Trace, tick_s: float):
        self.target = target
        self.need = replicas_needed(trace, target, profile)
        k8s, modal = target.kubernetes_pool, target.modal_pool
        self.k8s_lead = k8s.startup_seconds.high + tick_s if k8s else 0.0
        self.modal_lead = modal.startup.high + tick_s if modal else 0.0
        self.horizon = 3600.0
        self.keep_fraction = 1.0
        if k8s and modal:
            k8s_price = k8s.price_per_gpu_hour * k8s.gpus_per_replica / 3600
            self.keep_fraction = min(k8s_price / modal.price_per_container_second, 1.0)

    def _need_over(self, start: float, length: float) -> np.ndarray:
        a = int(max(start, 0) // DEMAND_WINDOW_S)
        b = int((start + length) // DEMAND_WINDOW_S) + 1
        window = self.need[a:b]
        return window if len(window) else np.zeros(1, dtype=np.int64)

    def decide(self, observation: Observation, now: float) -> Decision:
        k8s, modal = self.target.kubernetes_pool, self.target.modal_pool
        soon = int(self._need_over(now, self.k8s_lead).max())
        replicas = None
        if k8s and not modal:
            replicas = soon
        elif k8s:
            ahead = self._need_over(now + self.k8s_lead, self.horizon)
            # The largest layer busy for at least keep_fraction of the coming hour.
            replicas = int(np.quantile(ahead, 1 - self.keep_fraction, method="lower"))
        modal_min = None
        if modal:
            ready = observation.kubernetes.ready if observation.kubernetes and k8s else 0
            modal_min = max(int(self._need_over(now, self.modal_lead).max()) - ready, 0)
        return Decision(
            replicas, modal_min, 0 if modal else None,
            Reason("oracle", f"future need {soon} replicas", {"need_soon": soon}),
        )


def peak_replicas(trace: Trace, target: Target, profile: ReplicaProfile) -> int:
    """What a right-sized static pool for the trace's peak needs (`static-peak`)."""
    return int(replicas_needed(trace, target, profile).max())
