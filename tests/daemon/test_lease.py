"""The Lease elector against the Kubernetes API emulator, through the real `kubernetes` client.

Time is a fake monotonic clock the test moves, so expiry is exact and the tests fast.
"""

from __future__ import annotations

import asyncio

import pytest
from vllm_autoscaler.actuators.lease import LeaseElector, LeaseError
from vllm_autoscaler.config.schema import LeaderElection

ELECTION = LeaderElection(lease_name="autoscaler", namespace="default",
                          lease_duration_seconds=15, renew_deadline_seconds=10,
                          retry_period_seconds=2)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def candidates(kube_client, clock):
    def make(identity: str) -> LeaseElector:
        return LeaseElector(ELECTION, kube_client, identity, clock=clock)
    return make


def holder(kube) -> str | None:
    return kube.get("leases", "autoscaler")["spec"].get("holderIdentity")


async def test_the_first_candidate_creates_the_lease_and_leads(kube, candidates):
    a = candidates("pod-a")
    assert not a.is_leader
    assert await a.try_acquire_or_renew()
    lease = kube.get("leases", "autoscaler")
    assert lease["spec"]["holderIdentity"] == "pod-a"
    assert lease["spec"]["leaseDurationSeconds"] == 15
    assert lease["spec"]["leaseTransitions"] == 0


async def test_a_held_lease_is_not_taken_before_it_expires(kube, candidates, clock):
    a, b = candidates("pod-a"), candidates("pod-b")
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.now += 14  # b's first sight of the record was 14 s ago: not expired yet
    assert not await b.try_acquire_or_renew()
    assert holder(kube) == "pod-a"


async def test_renewals_keep_the_lease_and_a_standby_waits_on_its_own_clock(kube, candidates,
                                                                            clock):
    a, b = candidates("pod-a"), candidates("pod-b")
    await a.try_acquire_or_renew()
    for _ in range(5):
        clock.now += 8
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()  # each renewal restarts b's count
    assert holder(kube) == "pod-a"


async def test_a_standby_takes_over_an_expired_lease(kube, candidates, clock):
    a, b = candidates("pod-a"), candidates("pod-b")
    await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.now += 15  # a died: no renewal for a whole lease duration
    assert not a.is_leader  # and a, were it alive but cut off, stopped at its deadline
    assert await b.try_acquire_or_renew()
    lease = kube.get("leases", "autoscaler")
    assert lease["spec"]["holderIdentity"] == "pod-b"
    assert lease["spec"]["leaseTransitions"] == 1
    # a comes back: it sees b's fresh record and stays a standby.
    assert not await a.try_acquire_or_renew()


async def test_a_holder_that_cannot_renew_stops_leading_at_the_deadline(kube, candidates, clock):
    a = candidates("pod-a")
    await a.try_acquire_or_renew()
    kube.inject(503, path="/leases/", times=None)
    clock.now += 9
    with pytest.raises(LeaseError, match="HTTP 503"):
        await a.try_acquire_or_renew()
    assert a.is_leader  # within the renew deadline
    clock.now += 1
    assert not a.is_leader


async def test_of_two_racing_candidates_exactly_one_wins(kube, candidates):
    a, b = candidates("pod-a"), candidates("pod-b")
    results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(results) == [False, True]
    assert holder(kube) == ("pod-a" if results[0] else "pod-b")


async def test_release_hands_over_at_once(kube, candidates):
    a, b = candidates("pod-a"), candidates("pod-b")
    await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert not a.is_leader
    assert holder(kube) is None
    assert await b.try_acquire_or_renew()  # no need to wait for the expiry


async def test_a_former_holder_releasing_late_leaves_the_new_holder_alone(kube, candidates, clock):
    a, b = candidates("pod-a"), candidates("pod-b")
    await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.now += 15  # a was cut off; b took over
    assert await b.try_acquire_or_renew()
    await a.release()
    assert holder(kube) == "pod-b"


async def test_a_missing_permission_is_named(kube, candidates):
    kube.inject(403, method="POST", path="/leases")
    with pytest.raises(LeaseError, match="missing permission: verb 'create' on resource "
                                         "'leases' .API group 'coordination.k8s.io'."):
        await candidates("pod-a").try_acquire_or_renew()
