"""The router's rule: Kubernetes first, to a replica that admits at its next step; spill to
Modal only when every replica has requests waiting."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import PROFILE, config, trace

from vllm_autoscaler.controller.types import Decision, Reason
from vllm_autoscaler.simulations.simulator import Router, Simulation


class Engine:
    def __init__(self, running: int, waiting: int):
        self.num_waiting, self.load = waiting, running + waiting
        self.taken: list[int] = []

    def enqueue(self, req: int, now: float) -> None:
        self.taken.append(req)


def world(*engines: Engine):
    spilled: list[int] = []
    modal = SimpleNamespace(submit=lambda req, now: spilled.append(req), backlog=())
    pods = [SimpleNamespace(engine=e) for e in engines]
    k8s = SimpleNamespace(serving=pods, in_flight=[e.load for e in engines],
                          send=lambda i, req, now: pods[i].engine.enqueue(req, now))
    sim = SimpleNamespace(k8s=k8s, modal=modal)
    return Router(sim, spill_threshold=1), spilled


def test_a_replica_with_nothing_waiting_wins_over_a_less_loaded_one_that_queues():
    busy_but_admitting, queueing = Engine(running=6, waiting=0), Engine(running=1, waiting=1)
    router, spilled = world(queueing, busy_but_admitting)
    router.route(7, 0.0)
    assert busy_but_admitting.taken == [7] and not queueing.taken and not spilled


def test_among_admitting_replicas_the_least_loaded_takes_it():
    light, heavy = Engine(running=2, waiting=0), Engine(running=5, waiting=0)
    router, _ = world(heavy, light)
    router.route(1, 0.0)
    assert light.taken == [1]


@pytest.mark.parametrize("waiting", [(1, 1), (1, 3)])
def test_spills_to_modal_only_when_every_replica_queues(waiting):
    engines = [Engine(running=4, waiting=w) for w in waiting]
    router, spilled = world(*engines)
    router.route(3, 0.0)
    assert spilled == [3] and not any(e.taken for e in engines)


class Checking:
    """Scales among 1-4 pods (drains included) and checks the router's counts at each tick."""

    name = "checking"

    def __init__(self):
        self.sim: Simulation | None = None
        self.ticks = 0

    def decide(self, observation, now) -> Decision:
        k8s = self.sim.k8s
        assert k8s.in_flight == [s.engine.load for s in k8s.serving]
        self.ticks += 1
        return Decision((1, 4, 2, 3)[self.ticks % 4], None, 0, Reason("test", "test"))


def test_the_router_counts_of_requests_in_flight_match_the_engines_throughout_a_run():
    rng = np.random.default_rng(0)
    n = 3000
    prompts = rng.integers(50, 400, n)
    prompts[::97] = 200_000  # larger than the KV cache: rejected
    tr = trace(np.sort(rng.uniform(0, 120, n)), prompts, rng.integers(5, 80, n))
    policy = Checking()
    cfg = config("tick_seconds=1", "targets.0.kubernetes.drain_seconds=3")
    sim = Simulation(tr, cfg, cfg.targets[0], PROFILE, policy)
    policy.sim = sim
    result = sim.run()
    assert policy.ticks > 100
    assert result.summary["failures_by_reason"]["prompt larger than the KV cache"] > 0
