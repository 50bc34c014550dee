"""`oracle`: the cheapest schedule of pool sizes that meets the SLO on the trace, found with
hindsight and played with the pools' real start-up delays. A policy that learns the load as
it comes cannot be expected to beat it; how far above it a policy costs is the room it has.

The schedule: the trace is replayed once per size n of the primary pool (Kubernetes if the
target has it, else Modal's warm pool), fixed at n, with that pool starting instantly and
Modal, if there, taking what it cannot (as beside any fixed pool). Each window of
`SCHEDULE_WINDOW_S` gets, for every n, its cost and its requests within the SLO. One n per
window is then picked to minimise the total cost with the SLO met over the whole trace: a
Lagrangian relaxation of that multiple-choice knapsack (each window minimises cost − λ ·
requests within, for the smallest λ that meets the SLO). The policy asks for each window's
size one worst-case start-up ahead: it knows the load, not how long each pod will take.
"""

from __future__ import annotations

import math

import numpy as np

from ..config.schema import Config, Startup, Target
from ..controller.policies.baselines import StaticPolicy
from ..controller.profile import ReplicaProfile
from ..controller.types import Decision, Observation, Reason
from .demand import peak_replicas
from .simulator import SimResult, Simulation
from .traces import Trace

# Pods fixed for 5 minutes: the scale-down stabilisation window of the HPA and the controller.
SCHEDULE_WINDOW_S = 300.0
# Sizes tried above the peak demand of the capacity model (which is rounded per minute).
SIZES_ABOVE_PEAK = 2


def primary_bounds(target: Target) -> tuple[int, int]:
    """The size range of the pool the schedule sets: Kubernetes pods, else Modal warm containers."""
    if k8s := target.kubernetes_pool:
        return k8s.min_replicas, k8s.max_replicas
    return target.modal_pool.min_containers, target.modal_pool.max_containers


def fixed_pool(target: Target, size: int) -> StaticPolicy:
    if target.kubernetes_pool:
        return StaticPolicy(target, replicas=size)
    return StaticPolicy(target, replicas=0, modal_min=size)


def instant_start(target: Target) -> Target:
    """The target with its primary pool starting the moment it is asked for."""
    now = Startup(low=0, mode=0, high=0)
    if k8s := target.kubernetes_pool:
        instant = k8s.model_copy(update={"startup_seconds": now})
        return target.model_copy(update={"kubernetes": instant})
    starts = {"cold_start_seconds": now, "snapshot_start_seconds": now}
    return target.model_copy(update={"modal": target.modal_pool.model_copy(update=starts)})


def start_up_lead(target: Target, tick_s: float) -> float:
    """How far ahead the schedule is asked for: the worst start-up, plus a tick to notice."""
    k8s = target.kubernetes_pool
    return (k8s.startup_seconds.high if k8s else target.modal_pool.startup.high) + tick_s


def window_outcomes(
    result: SimResult, trace: Trace, slo_s: float, windows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per window: what the run cost in it, and how many requests arriving in it met the SLO."""
    edges = np.arange(windows + 1) * SCHEDULE_WINDOW_S
    spent = np.add(result.timeline.cost_k8s, result.timeline.cost_modal)
    cumulative = np.interp(edges, result.timeline.time, spent, left=0.0)
    cumulative[-1] = result.summary["cost_total"]  # the last window pays for the drain too
    within = np.nan_to_num(result.ttft, nan=math.inf) <= slo_s
    window = np.minimum((trace.arrival_s // SCHEDULE_WINDOW_S).astype(np.int64), windows - 1)
    return np.diff(cumulative), np.bincount(window, weights=within, minlength=windows)


def cheapest_choice(costs: np.ndarray, within: np.ndarray, required: float) -> np.ndarray:
    """The row (pool size) per column (window) minimising the total cost with at least
    `required` requests within the SLO in total; the most within where nothing reaches it."""
    columns = np.arange(costs.shape[1])

    def choice(weight: float) -> np.ndarray:
        return np.argmin(costs - weight * within, axis=0)

    def met(rows: np.ndarray) -> bool:
        return within[rows, columns].sum() >= required

    low, high = 0.0, 1.0
    while not met(choice(high)):
        if high > 1e12:
            return np.argmax(within, axis=0)
        low, high = high, high * 2
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (low, middle) if met(choice(middle)) else (middle, high)
    # Between the two weights only some windows change: take those changes one by one.
    rows, enough = choice(low), choice(high)
    for column in np.flatnonzero(rows != enough):
        if met(rows):
            break
        rows[column] = enough[column]
    return rows


def oracle_schedule(
    trace: Trace, config: Config, target: Target, profile: ReplicaProfile
) -> np.ndarray:
    """The primary pool's size for each window of the trace (see the module's docstring)."""
    windows = max(math.ceil(trace.duration_s / SCHEDULE_WINDOW_S), 1)
    instant, required = instant_start(target), target.slo.attainment * len(trace)
    low, high = primary_bounds(target)
    largest = min(peak_replicas(trace, target, profile) + SIZES_ABOVE_PEAK, high)
    sizes = list(range(low, max(largest, low) + 1))
    outcomes = []
    while len(outcomes) < len(sizes):
        for n in sizes[len(outcomes) :]:
            run = Simulation(trace, config, instant, profile, fixed_pool(instant, n)).run()
            outcomes.append(window_outcomes(run, trace, target.slo.ttft_seconds, windows))
        costs, within = (np.array(column) for column in zip(*outcomes))
        if within.max(axis=0).sum() < required:  # the peak's estimate was short: up to the bound
            sizes = list(range(low, high + 1))
    return np.array(sizes)[cheapest_choice(costs, within, required)]


class OraclePolicy:
    """Plays `schedule` (a size per window): each window's size is asked for `lead` seconds
    before the window starts and kept to its end."""

    name = "oracle"

    def __init__(self, target: Target, schedule: np.ndarray, lead: float):
        self.schedule = schedule
        self.lead = lead
        self.fixed = fixed_pool(target, primary_bounds(target)[0]).decision  # Modal's settings
        self.kubernetes = target.kubernetes_pool is not None

    def _window(self, t: float) -> int:
        return min(max(int(t // SCHEDULE_WINDOW_S), 0), len(self.schedule) - 1)

    def decide(self, observation: Observation, now: float) -> Decision:
        size = int(self.schedule[self._window(now) : self._window(now + self.lead) + 1].max())
        reason = Reason("oracle", f"schedule: {size} until {self.lead:.0f} s ahead", {"size": size})
        buffer = self.fixed.modal_buffer_containers
        if self.kubernetes:
            return Decision(size, self.fixed.modal_min_containers, buffer, reason)
        return Decision(None, size, buffer, reason)
