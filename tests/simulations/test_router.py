"""The router's rule: Kubernetes first, to a replica that admits at its next step; spill to
Modal only when every replica has requests waiting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_autoscaler.simulations.simulator import Router


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
    sim = SimpleNamespace(k8s=SimpleNamespace(serving=pods), modal=modal)
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
