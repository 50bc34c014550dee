"""Simulator speed: simulated requests per wall-second on one core, and peak memory.

Goal (issue 3): a 1-day trace at 1000 requests/minute (~1.44 M requests) in <= 15 s on one
core, memory <= 2 GB. Run: python tests/benchmarks/bench_simulator.py [hours]
"""

from __future__ import annotations

import resource
import sys
import time

from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.simulations.generators import poisson
from vllm_autoscaler.simulations.run import simulate


def main(hours: float = 24.0) -> None:
    started = time.perf_counter()
    trace = poisson(rate_per_s=1000 / 60, duration_s=hours * 3600, seed=1)
    generated = time.perf_counter() - started
    config = load_config(overrides=["targets.0.kubernetes.max_replicas=64",
                                    "targets.0.modal.max_containers=64"])
    print(f"trace: {len(trace):,} requests over {hours:g} h, generated in {generated:.2f} s")
    for policy in ("static-peak", "controller"):
        cpu = time.process_time()
        result = simulate(trace, config, policy)
        cpu = time.process_time() - cpu  # on a shared machine, what wall time would be alone
        wall = result.summary["sim_wall_seconds"]
        print(
            f"{policy:>12}: {wall:6.2f} s wall ({cpu:.2f} s CPU incl. set-up and summary), "
            f"{len(trace) / wall:9,.0f} simulated requests/s, "
            f"goal 1.44 M in <= 15 s -> {1.44e6 / (len(trace) / wall):5.1f} s "
            f"(SLO attainment {result.summary['slo_attainment']:.4f})"
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:,.0f} MB (goal <= 2048 MB)")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 24.0)
