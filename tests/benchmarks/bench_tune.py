"""Tuning speed: a study of 100 trials on a 6-hour trace at 1000 requests/minute.

Goal (issue 7): <= 10 min wall on 2 cores, everything included (the up-front max-capacity
check, the trials, the held-out comparison). Run: python tests/benchmarks/bench_tune.py [trials] [hours]
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
from pathlib import Path

from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.simulations.generators import poisson
from vllm_autoscaler.simulations.tune import TuneOptions, tune

GOAL_TRIALS, GOAL_MINUTES = 100, 10


def main(trials: int = GOAL_TRIALS, hours: float = 6.0) -> None:
    trace = poisson(rate_per_s=1000 / 60, duration_s=hours * 3600, seed=1)
    config = load_config(overrides=["targets.0.kubernetes.max_replicas=64", "targets.0.modal.max_containers=64"])
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as out:
        report = tune(trace, config, Path(out), TuneOptions(trials=trials, workers=workers))
    wall, trials_wall = report["wall_seconds"], report["trials_wall_seconds"]
    fixed = wall - trials_wall
    at_goal = fixed + trials_wall * GOAL_TRIALS / trials
    best, held_out = report["best_trial"], report["held_out"]
    print(f"trace: {len(trace):,} requests over {hours:g} h; tuning part {report['tuning_part']['requests']:,}")
    print(
        f"{trials} trials ({1 + report['resamples']} replays each) on {workers} processes: {wall:.1f} s wall "
        f"({trials_wall:.1f} s in trials, {fixed:.1f} s max-capacity check + held-out comparison), "
        f"{60 * trials / trials_wall:.1f} trials/min"
    )
    print(f"{GOAL_TRIALS} trials -> {at_goal / 60:.1f} min (goal <= {GOAL_MINUTES} min)"
          + ("" if trials == GOAL_TRIALS else f", extrapolated from {trials}"))
    # Wall time depends on what else runs on the machine; CPU time does not.
    cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(f"CPU time {cpu:.0f} s ({cpu / trials:.1f} s per trial incl. fixed parts): "
          f"{cpu / workers / 60:.1f} min on {workers} otherwise idle cores; load average now "
          f"{os.getloadavg()[0]:.1f}")
    print(f"best trial {best['number']}: ${best['cost']:.2f} at {best['slo_attainment']:.2%} on the tuning part "
          f"(per replay: {', '.join(f'{a:.2%}' for a in best['slo_attainment_by_replay'])})")
    for name, summary in held_out.items():
        print(f"  held out {name:>12}: ${summary['cost_total']:8.2f}, SLO attainment {summary['slo_attainment']:.2%}")


if __name__ == "__main__":
    main(*(int(sys.argv[1]),) if len(sys.argv) > 1 else (), *(float(a) for a in sys.argv[2:3]))
