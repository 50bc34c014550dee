"""Leader election over a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does.

Several controller replicas run; the one holding the Lease actuates, the others observe. The
holder renews the Lease every retry period and counts itself leader only while its last
renewal is younger than the renew deadline (a holder cut off from the API server stops
actuating before anyone else may start). A standby takes the Lease over once it has seen no
renewal for the lease duration, timed on its own monotonic clock: the clocks of two machines
disagree, so the renewTime written by another is only compared with itself. Every write
carries the resourceVersion read, so of two candidates racing for a free Lease one wins and
the other gets 409 Conflict.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
import urllib3
from kubernetes import client
from kubernetes.client import ApiClient, ApiException

from ..config.schema import LeaderElection
from .errors import ActuatorError

log = structlog.get_logger(__name__)
T = TypeVar("T")


class LeaseError(ActuatorError):
    """The Lease could not be read or written (the message says what the API server said)."""


class LeaseElector:
    """Acquires, renews and releases one Lease for `identity`; `is_leader` says who actuates."""

    def __init__(self, config: LeaderElection, api_client: ApiClient, identity: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.identity = identity
        self._config = config
        self._api = client.CoordinationV1Api(api_client)
        self._clock = clock
        self._renewed_at: float | None = None  # our clock when our last renewal was sent
        self._observed: tuple[str | None, datetime | None] | None = None  # holder, renewTime
        self._observed_at = 0.0  # our clock when `_observed` last changed
        self._where = f"Lease '{config.lease_name}' in namespace '{config.namespace}'"
        # A renewal must answer well within the deadline, or it is too late anyway.
        self._timeout_s = config.renew_deadline_seconds / 2

    @property
    def is_leader(self) -> bool:
        return self._renewed_at is not None and \
            self._clock() - self._renewed_at < self._config.renew_deadline_seconds

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; whether this replica leads afterwards. Raises LeaseError when the API
        server cannot be asked (leadership then lapses at the renew deadline)."""
        was_leader = self.is_leader
        sent_at = self._clock()
        try:
            if await self._acquire_or_renew():
                self._renewed_at = sent_at
        finally:
            self._log_change(was_leader)
        return self.is_leader

    async def release(self) -> None:
        """Give the Lease up at once (holder cleared), so that a standby need not wait for it
        to expire. Only a Lease this replica holds is touched."""
        if self._renewed_at is None:
            return
        self._renewed_at = None  # stop actuating before the Lease says so
        lease = await self._read()
        if lease is None or lease.spec.holder_identity != self.identity:
            return
        lease.spec = client.V1LeaseSpec(
            holder_identity=None, lease_duration_seconds=1, renew_time=_now(),
            acquire_time=lease.spec.acquire_time, lease_transitions=lease.spec.lease_transitions)
        try:
            await self._call("update", self._api.replace_namespaced_lease,
                             self._config.lease_name, self._config.namespace, lease)
        except ApiException as exc:
            if exc.status != 409:  # 409: someone else wrote it meanwhile; it is not ours
                raise self._error("update", exc) from None
        log.info("leader.released", lease=self._config.lease_name, identity=self.identity)

    async def _acquire_or_renew(self) -> bool:
        lease = await self._read()
        now = _now()
        if lease is None:
            return await self._create(now)
        spec = lease.spec
        self._observe(spec.holder_identity, spec.renew_time)
        held_by_another = spec.holder_identity not in (None, "", self.identity)
        duration = spec.lease_duration_seconds or self._config.lease_duration_seconds
        if held_by_another and self._clock() - self._observed_at < duration:
            return False
        taking_over = spec.holder_identity != self.identity
        lease.spec = client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self._config.lease_duration_seconds,
            acquire_time=now if taking_over else spec.acquire_time,
            renew_time=now,
            lease_transitions=(spec.lease_transitions or 0) + (1 if held_by_another else 0))
        try:  # conditional on the resourceVersion read: a concurrent writer makes this a 409
            await self._call("update", self._api.replace_namespaced_lease,
                             self._config.lease_name, self._config.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise self._error("update", exc) from None
        return True

    async def _create(self, now: datetime) -> bool:
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self._config.lease_name,
                                         namespace=self._config.namespace),
            spec=client.V1LeaseSpec(holder_identity=self.identity,
                                    lease_duration_seconds=self._config.lease_duration_seconds,
                                    acquire_time=now, renew_time=now, lease_transitions=0))
        try:
            await self._call("create", self._api.create_namespaced_lease,
                             self._config.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:  # AlreadyExists: another candidate created it first
                return False
            raise self._error("create", exc) from None
        return True

    async def _read(self) -> client.V1Lease | None:
        try:
            return await self._call("get", self._api.read_namespaced_lease,
                                    self._config.lease_name, self._config.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._error("get", exc) from None

    async def _call(self, verb: str, method: Callable[..., T], *args: Any) -> T:
        """The sync client, off the event loop; transport failures as LeaseError."""
        try:
            return await asyncio.to_thread(method, *args, _request_timeout=self._timeout_s)
        except urllib3.exceptions.HTTPError as exc:
            raise LeaseError(f"{self._where}: {verb} failed: {exc}") from None

    def _observe(self, holder: str | None, renew_time: datetime | None) -> None:
        if self._observed != (holder, renew_time):
            self._observed, self._observed_at = (holder, renew_time), self._clock()

    def _error(self, verb: str, exc: ApiException) -> LeaseError:
        if exc.status == 403:
            return LeaseError(
                f"{self._where}: missing permission: verb '{verb}' on resource 'leases' (API "
                "group 'coordination.k8s.io'); grant it to the controller's ServiceAccount "
                f"({_status_message(exc)})")
        return LeaseError(f"{self._where}: {verb} failed with HTTP {exc.status}: "
                          f"{_status_message(exc)}")

    def _log_change(self, was_leader: bool) -> None:
        if self.is_leader != was_leader:
            event = "leader.acquired" if self.is_leader else "leader.lost"
            log.info(event, lease=self._config.lease_name, identity=self.identity)


def _now() -> datetime:
    return datetime.now(UTC)


def _status_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"HTTP {exc.status} {exc.reason}"
