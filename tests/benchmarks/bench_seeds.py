"""The controller against the oracle on several seeds of the synthetic loads.

`bench_policies.py` runs one seed per load; how far the controller is from the oracle on a
step or a burst depends on where the noise falls. This runs the same steady, step, spiky and
diurnal loads (6-hour days, as `bench_policies.py --quick`), a steady load 3.3x as large (1000
requests/minute, ~13 pods), and MMPP bursts, on seeds
0..N-1 and prints, per seed, each policy's cost and SLO attainment and their ratio, then the
ratio of the totals.
Run: python tests/benchmarks/bench_seeds.py [--seeds 6] [--loads steady,large,step,spiky,diurnal,mmpp]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor

from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.simulations import generators
from vllm_autoscaler.simulations.run import simulate

HOURS = 6
LOADS = {
    "steady": lambda seed: generators.poisson(rate_per_s=5, duration_s=4 * 3600, seed=seed),
    # A larger pool (~13 pods), where 10% of the pods asked for is more than a pod.
    "large": lambda seed: generators.poisson(rate_per_s=1000 / 60, duration_s=3 * 3600, seed=seed),
    "step": lambda seed: generators.step(rates=(2, 8, 4, 10, 3), step_duration_s=2400, seed=seed),
    "spiky": lambda seed: generators.spiky_daily(
        base_rate_per_s=1, peak_rate_per_s=10, peak_hours_per_day=3,
        duration_s=HOURS * 3600, seed=seed,
    ),
    "diurnal": lambda seed: generators.diurnal(
        mean_rate=4, peak_to_trough=4, duration_s=HOURS * 3600, period_s=HOURS * 3600, seed=seed
    ),
    # MMPP: 1 req/s with 10x bursts of 2 minutes on average, 10% of the time, over 8 hours.
    "mmpp": lambda seed: generators.bursty(
        base_rate_per_s=1, burst_multiplier=10, mean_burst_s=120, burst_fraction=0.1,
        duration_s=8 * 3600, seed=seed,
    ),
}
POLICIES = ("controller", "oracle")


def run(job: tuple[str, int, str]) -> tuple[str, int, str, float, float]:
    load, seed, policy = job
    summary = simulate(LOADS[load](seed), load_config(), policy).summary
    return load, seed, policy, summary["cost_total"], summary["slo_attainment"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--loads", default=",".join(LOADS))
    args = parser.parse_args()
    loads = args.loads.split(",")
    seeds = range(args.seeds)
    jobs = [(load, seed, policy) for load in loads for seed in seeds for policy in POLICIES]
    with ProcessPoolExecutor(2) as pool:
        results = {(load, seed, policy): (cost, met)
                   for load, seed, policy, cost, met in pool.map(run, jobs)}
    for load in loads:
        for seed in seeds:
            (cost, met), (best, best_met) = (results[load, seed, p] for p in POLICIES)
            print(f"{load:8s} seed {seed}: controller ${cost:6.2f} {met:.2%}  "
                  f"oracle ${best:6.2f} {best_met:.2%}  ÷ {cost / best:.3f}")
        total = {p: sum(results[load, seed, p][0] for seed in seeds) for p in POLICIES}
        print(f"{load:8s} in total: ÷ {total['controller'] / total['oracle']:.3f}")


if __name__ == "__main__":
    main()
