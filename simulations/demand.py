"""The trace's demand per window through the capacity model: how many replicas the load of
each window needs to stay within the SLO (`static-peak`'s size, the warm start's pool)."""

from __future__ import annotations

import math

import numpy as np

from ..config.schema import Target
from ..controller.capacity import replica_capacity
from ..controller.profile import ReplicaProfile
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


def peak_replicas(trace: Trace, target: Target, profile: ReplicaProfile) -> int:
    """What a right-sized static pool for the trace's peak needs (`static-peak`)."""
    return int(replicas_needed(trace, target, profile).max())
