"""Wall time to apply one decision to 50 Deployments through the Kubernetes API emulator.

Goal: <= 1 s for a rescale of all 50 (each: read, HPA check, conditional scale write, Event).
Run: python tests/benchmarks/bench_kube_actuator.py
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the emulator

from emulators.kube_api import running_kube_api

from vllm_autoscaler.actuators.kubernetes import (
    KubernetesActuator,
    kubernetes_api_client,
)
from vllm_autoscaler.config.schema import KubernetesPool
from vllm_autoscaler.controller.types import Decision, Reason

DEPLOYMENTS = 50
ROUNDS = 5


def decision(replicas: int) -> Decision:
    return Decision(replicas, None, None, Reason("bench", f"benchmark round to {replicas}"))


async def timed_round(actuators: list[KubernetesActuator], replicas: int) -> float:
    started = time.perf_counter()
    results = await asyncio.gather(*(a.apply(decision(replicas)) for a in actuators))
    elapsed = time.perf_counter() - started
    assert all(r.after is not None and r.after.desired == replicas for r in results)
    return elapsed


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with running_kube_api() as kube, tempfile.TemporaryDirectory() as tmp:
        kubeconfig = kube.write_kubeconfig(Path(tmp) / "kubeconfig")
        for i in range(DEPLOYMENTS):
            kube.add_deployment(f"vllm-{i}", replicas=1)
        api_client = kubernetes_api_client(str(kubeconfig))
        actuators = [KubernetesActuator(KubernetesPool(deployment=f"vllm-{i}", max_replicas=100),
                                        api_client=api_client, max_writes_per_minute=100)
                     for i in range(DEPLOYMENTS)]
        rescale = [await timed_round(actuators, 2 + r) for r in range(ROUNDS)]
        unchanged = [await timed_round(actuators, 1 + ROUNDS) for _ in range(ROUNDS)]
        api_client.close()
        calls = len(kube.requests)
    print(f"kubernetes actuator, {DEPLOYMENTS} Deployments, {ROUNDS} rounds each "
          f"({calls} API calls in all):")
    print(f"  rescale all:    median {statistics.median(rescale):.3f} s, "
          f"max {max(rescale):.3f} s (goal <= 1 s)")
    print(f"  no change:      median {statistics.median(unchanged):.3f} s, "
          f"max {max(unchanged):.3f} s")


if __name__ == "__main__":
    asyncio.run(main())
