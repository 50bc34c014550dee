"""The figures a simulation run is judged by (the keys of summary.json)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .simulator import SimResult, Simulation

SUMMARY_KEYS = (
    "requests", "completed", "failed", "slo_attainment", "ttft_p50", "ttft_p95", "ttft_p99",
    "itl_p50", "itl_p95", "itl_p99", "e2e_p99", "cost_total", "cost_k8s", "cost_modal",
    "gpu_hours_k8s", "gpu_hours_modal", "mean_utilization", "sim_wall_seconds",
)  # fmt: skip


def percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarise(sim: Simulation, wall_s: float) -> SimResult:
    from .simulator import SimResult

    arrival = sim.trace.arrival_s
    counted = slice(sim.warmup_requests, None)  # the warm-up replay is not judged
    first = np.array(sim.first_token_at[counted])
    done = np.array(sim.finished_at[counted])
    failed = np.frombuffer(bytes(sim.failed[counted]), dtype=np.uint8).astype(bool)
    ok = ~failed
    ttft = first - arrival
    e2e = done - arrival
    output = sim.trace.output_tokens
    multi = ok & (output > 1)
    itl = (done[multi] - first[multi]) / (output[multi] - 1)
    slo = sim.target.slo.ttft_seconds
    within = ok & (ttft <= slo)
    now = sim.now
    billed = sum(p.counted_seconds(now) for p in sim.pools)
    busy = sum(p.counted_busy(now) for p in sim.pools)
    cost_k8s = sim.k8s.cost(now) if sim.k8s else 0.0
    cost_modal = sim.modal.cost(now) if sim.modal else 0.0
    summary = {
        "requests": int(len(arrival)),
        "completed": int(ok.sum()),
        "failed": int(failed.sum()),
        "slo_attainment": float(within.mean()) if len(arrival) else 1.0,
        "ttft_p50": percentile(ttft[ok], 50),
        "ttft_p95": percentile(ttft[ok], 95),
        "ttft_p99": percentile(ttft[ok], 99),
        "itl_p50": percentile(itl, 50),
        "itl_p95": percentile(itl, 95),
        "itl_p99": percentile(itl, 99),
        "e2e_p99": percentile(e2e[ok], 99),
        "cost_total": cost_k8s + cost_modal,
        "cost_k8s": cost_k8s,
        "cost_modal": cost_modal,
        "gpu_hours_k8s": sim.k8s.gpu_hours(now) if sim.k8s else 0.0,
        "gpu_hours_modal": sim.modal.gpu_hours(now) if sim.modal else 0.0,
        "mean_utilization": busy / billed if billed > 0 else 0.0,
        "sim_wall_seconds": wall_s,
        "failures_by_reason": dict(sim.fail_reasons),
    }
    return SimResult(sim.policy.name, summary, sim.timeline, ttft, e2e)
