"""What the forecast's daily season buys: a load that jumps tenfold at the same hour every day.

Three days of Poisson arrivals at 1 req/s, 10 req/s from 09:00 to 12:00 each day. The
`controller` runs with its daily season (`season_seconds: 86400`, the default) and without
(`0`), on Kubernetes alone (pods take 2-8 minutes to start: only a forecast starts them in
time) and on the hybrid target; per day: cost and share of requests within the TTFT SLO.
Day 1 is the same for both (no history yet). Run: python tests/benchmarks/bench_season.py
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np

from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.simulations import generators
from vllm_autoscaler.simulations.run import simulate

DAY = 86400
DAYS = 3
QUIET, BUSY = 1.0, 10.0


def daily_step():
    day = (QUIET,) * 3 + (BUSY,) + (QUIET,) * 4  # 3-hour steps: busy 09:00-12:00
    return generators.step(rates=day * DAYS, step_duration_s=DAY / len(day), seed=4)


def run(setup: tuple[str, float]) -> tuple[str, float, list[float], list[float]]:
    pools, season = setup
    overrides = [f"targets.0.policy.controller.season_seconds={season}"]
    if pools == "kubernetes alone":
        overrides.append("targets.0.modal=null")
    config = load_config(overrides=overrides)
    trace = daily_step()
    result = simulate(trace, config, "controller")
    times = np.array(result.timeline.time)
    spent = np.array(result.timeline.cost_k8s) + np.array(result.timeline.cost_modal)
    by_day = [spent[times < (d + 1) * DAY][-1] for d in range(DAYS)]
    costs = np.diff([0.0, *by_day]).tolist()
    slo = config.targets[0].slo.ttft_seconds
    day_of = (trace.arrival_s // DAY).astype(int)
    within = [float(np.mean(result.ttft[day_of == d] <= slo)) for d in range(DAYS)]
    return pools, season, costs, within


def main() -> None:
    setups = [(pools, season) for pools in ("kubernetes alone", "hybrid") for season in (DAY, 0)]
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(run, setups))
    print(f"{'pools':<17} {'season':>7}  " + "  ".join(f"{'day ' + str(d + 1):>16}" for d in range(DAYS)))
    for pools, season, costs, within in results:
        days = "  ".join(f"${c:6.2f} {100 * w:6.2f}%" for c, w in zip(costs, within, strict=True))
        print(f"{pools:<17} {'1 day' if season else 'none':>7}  {days}")


if __name__ == "__main__":
    main()
