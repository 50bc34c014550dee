"""Simulator speed: simulated requests per wall-second on one core, and peak memory, with the
pure-Python engine and the mypyc-compiled one (simulations/native.py) side by side.

Goal (issue 3): a 1-day trace at 1000 requests/minute (~1.44 M requests) in <= 15 s on one
core, memory <= 2 GB. Run: python tests/benchmarks/bench_simulator.py [hours] [repeats]
(best of `repeats` runs per figure; engines interleaved so that load elsewhere hits both alike).
"""

from __future__ import annotations

import gc
import resource
import sys
import time

from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.simulations import engine, native, pools
from vllm_autoscaler.simulations.build_native import source_sha256
from vllm_autoscaler.simulations.generators import poisson
from vllm_autoscaler.simulations.run import simulate


def main(hours: float = 24.0, repeats: int = 1) -> None:
    started = time.perf_counter()
    trace = poisson(rate_per_s=1000 / 60, duration_s=hours * 3600, seed=1)
    generated = time.perf_counter() - started
    config = load_config(overrides=["targets.0.kubernetes.max_replicas=64",
                                    "targets.0.modal.max_containers=64"])
    print(f"trace: {len(trace):,} requests over {hours:g} h, generated in {generated:.2f} s")
    compiled = native.compiled_replica(source_sha256())
    engines = {"pure": engine.Replica, "compiled": compiled}
    print(f"engine the simulator uses: {'compiled (mypyc)' if native.COMPILED else 'pure Python'}"
          + ("" if compiled else "; no compiled build of this engine.py (make native): pure only"))
    default = pools.Replica
    for policy in ("static-peak", "controller"):
        best: dict[str, tuple[float, float, float]] = {}  # engine -> (wall, CPU, SLO attainment)
        for _ in range(repeats):
            for name, replica in engines.items():
                if replica is None:
                    continue
                pools.Replica = replica  # where servers make their engines
                cpu = time.process_time()
                try:
                    result = simulate(trace, config, policy)
                finally:
                    pools.Replica = default
                cpu = time.process_time() - cpu  # on a shared machine: wall time alone
                wall = result.summary["sim_wall_seconds"]
                if name not in best or cpu < best[name][1]:
                    best[name] = (wall, cpu, result.summary["slo_attainment"])
                del result
                gc.collect()  # a simulation is a web of cycles: free it before the next one
        for name, (wall, cpu, slo) in best.items():
            print(
                f"{policy:>12} {name:>8}: {wall:6.2f} s wall ({cpu:.2f} s CPU incl. set-up and "
                f"summary), {len(trace) / wall:9,.0f} simulated requests/s, goal 1.44 M in "
                f"<= 15 s -> {1.44e6 / (len(trace) / wall):5.1f} s (SLO attainment {slo:.4f})"
            )
        if len(best) == 2:
            (pure_wall, pure_cpu, pure_slo), (wall, cpu, slo) = best["pure"], best["compiled"]
            print(f"{policy:>12}  speed-up: {pure_wall / wall:.2f}x wall, {pure_cpu / cpu:.2f}x CPU "
                  f"(compiled over pure); same SLO attainment: {pure_slo == slo}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory (all runs): {peak_mb:,.0f} MB (goal <= 2048 MB)")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(float(args[0]) if args else 24.0, int(args[1]) if len(args) > 1 else 1)
