"""One decision of the `controller` policy: median and p99 wall time (goal <= 5 ms).

The policy is fed a full day of 15-s ticks first (the forecaster's seasonal history is at its
largest), then timed per call. Run: python tests/benchmarks/bench_decision.py
"""

from __future__ import annotations

import math
import statistics
import time

from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.controller.policies.autoscaler import ControllerPolicy
from vllm_autoscaler.controller.profile import load_profile
from vllm_autoscaler.controller.types import Observation, PoolState, Sample

TICK = 15.0


def observation(now: float) -> Observation:
    rate = 10 + 8 * math.sin(2 * math.pi * now / 86400)

    def s(v: float) -> Sample:
        return Sample(v, now)

    return Observation(
        time=now, kubernetes=PoolState(6, 1, 7, now), modal=PoolState(2, 0, 2, now, backlog=0),
        running=s(rate * 8), waiting=s(1.0), kv_usage_mean=s(0.5), kv_usage_max=s(0.8),
        ttft_p50=s(0.3), ttft_p95=s(1.2), ttft_p99=s(2.1), itl_p50=s(0.04), itl_p95=s(0.06),
        itl_p99=s(0.08), arrival_rate=s(rate), prompt_tokens_rate=s(rate * 1100),
        output_tokens_rate=s(rate * 210), replicas_reporting=s(9.0),
    )  # fmt: skip


def main() -> None:
    config = load_config()
    policy = ControllerPolicy(config.targets[0], TICK, load_profile(config.targets[0].profile))
    ticks = int(86400 / TICK)
    for i in range(ticks):
        policy.decide(observation(i * TICK), i * TICK)
    timings = []
    for i in range(ticks, ticks + 2000):
        obs = observation(i * TICK)
        started = time.perf_counter()
        policy.decide(obs, i * TICK)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    print(f"controller.decide: median {statistics.median(timings):.3f} ms, "
          f"p99 {timings[int(0.99 * len(timings))]:.3f} ms, max {timings[-1]:.3f} ms (goal <= 5 ms)")


if __name__ == "__main__":
    main()
