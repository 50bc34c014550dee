"""A yardstick found with hindsight: the cheapest fixed pool that met the SLO on a trace.

No policy knows the trace in advance, so no policy should be expected to beat it by much on a
load that does not move; a policy far above it has room to improve, one near it has little.
"""

from __future__ import annotations

from ..config.schema import Config
from .run import edit_target, pick_target, simulate

# Beside Modal, fewer pods than Kubernetes alone needs can be cheaper (Modal takes the peaks),
# or more can be needed (a request spilt to a starting container can be later than one queued
# at a pod): pools within this many of that number are tried.
AROUND_WITH_MODAL = 3


def static_summary(trace, config: Config, pods: int, target_name: str | None) -> dict:
    return simulate(trace, config, f"static:kubernetes_replicas={pods}", target_name).summary


def fewest_pods(trace, config: Config, target_name: str | None = None) -> tuple[int, dict] | None:
    """On Kubernetes alone (Modal off), the fewest pods reaching the SLO and their summary, by
    bisection (attainment rises with the pool); None if even `max_replicas` misses it."""
    alone = edit_target(config, target_name, lambda target: target.update(modal=None))
    target = pick_target(alone, target_name)
    low, high = 0, target.kubernetes.max_replicas  # `low` misses the SLO, `high` may not
    runs = {high: static_summary(trace, alone, high, target_name)}
    if runs[high]["slo_attainment"] < target.slo.attainment:
        return None
    while high - low > 1:
        mid = (low + high) // 2
        runs[mid] = static_summary(trace, alone, mid, target_name)
        low, high = (low, mid) if runs[mid]["slo_attainment"] >= target.slo.attainment else (mid, high)
    return high, runs[high]


def cheapest_static_pool(
    trace, config: Config, target_name: str | None = None, fewest: tuple[int, dict] | None = None
) -> tuple[int, dict] | None:
    """The cheapest fixed number of Kubernetes pods reaching the SLO on the target as configured
    (Modal, if there, taking what the pods cannot) and its summary; None if no pool does or the
    target has no Kubernetes pool. `fewest`: `fewest_pods` of this trace, if already known."""
    target = pick_target(config, target_name)
    if not target.kubernetes_pool:
        return None
    fewest = fewest or fewest_pods(trace, config, target_name)
    if not target.modal_pool:
        return fewest
    largest = target.kubernetes_pool.max_replicas
    alone = fewest[0] if fewest else largest
    sizes = range(max(alone - AROUND_WITH_MODAL, 0), min(alone + AROUND_WITH_MODAL, largest) + 1)
    runs = {n: static_summary(trace, config, n, target_name) for n in sizes}
    met = {n: s for n, s in runs.items() if s["slo_attainment"] >= target.slo.attainment}
    best = min(met, key=lambda n: met[n]["cost_total"], default=None)
    return None if best is None else (best, met[best])
