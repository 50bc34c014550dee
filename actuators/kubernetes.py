"""Kubernetes actuator: scales one Deployment through its `scale` subresource.

It uses the real `kubernetes` client (synchronous, run off the event loop in threads) and
behaves as a good controller does: optimistic concurrency (the write carries the
resourceVersion read; a 409 re-reads and tries again), Retry-After honoured on 429, bounded
backoff on 5xx and timeouts, no write when nothing changes, a cap on writes per minute, an
Event on the Deployment for each rescale (as the HorizontalPodAutoscaler records), and a
refusal to fight a HorizontalPodAutoscaler that targets the same Deployment.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
import urllib3
from kubernetes import client, config
from kubernetes.client import ApiClient, ApiException
from kubernetes.config import ConfigException
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from ..config.schema import KubernetesPool
from ..controller.types import ActuationResult, Decision, PoolState, Reason
from .errors import (
    ActuatorError,
    AuthenticationFailed,
    ConflictingAutoscaler,
    PermissionDenied,
    TargetNotFound,
    Unavailable,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

COMPONENT = "vllm-autoscaler"
# Answers worth another try: conflicts (after a re-read), throttling, server trouble.
TRANSIENT_STATUSES = {409, 429, 500, 502, 503, 504}


def kubernetes_api_client(kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    """A client for the cluster: in-cluster credentials when running in a pod (and no
    kubeconfig is named), else the kubeconfig (`kubeconfig`, $KUBECONFIG or ~/.kube/config).

    urllib3's own retries are off: the actuator's bounded retries are the only ones.
    """
    configuration = client.Configuration()
    try:
        if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(kubeconfig, context, client_configuration=configuration)
    except ConfigException as exc:
        raise ActuatorError(f"cannot configure the Kubernetes client: {exc}") from None
    configuration.retries = False
    return ApiClient(configuration)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds on retrying one read or one read-modify-write."""

    attempts: int = 5
    total_seconds: float = 20.0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 8.0


@dataclass(frozen=True, slots=True)
class _Call:
    """One API call as RBAC sees it, to name a missing permission."""

    verb: str
    resource: str
    group: str


GET_DEPLOYMENT = _Call("get", "deployments", "apps")
GET_SCALE = _Call("get", "deployments/scale", "apps")
UPDATE_SCALE = _Call("update", "deployments/scale", "apps")
LIST_HPAS = _Call("list", "horizontalpodautoscalers", "autoscaling")
CREATE_EVENT = _Call("create", "events", "")


class KubernetesActuator:
    """Reads and sets the replicas of one Deployment from decisions."""

    pool = "kubernetes"

    def __init__(
        self,
        pool: KubernetesPool,
        *,
        api_client: ApiClient | None = None,
        dry_run: bool = False,
        max_writes_per_minute: int = 6,
        request_timeout_seconds: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        """`api_client` is shared and left open (build one with `kubernetes_api_client`);
        without it the actuator builds and owns its own (see `aclose`)."""
        self._pool = pool
        self._owns_client = api_client is None
        self._client = api_client or kubernetes_api_client()
        self._apps = client.AppsV1Api(self._client)
        self._autoscaling = client.AutoscalingV2Api(self._client)
        self._core = client.CoreV1Api(self._client)
        self._dry_run = dry_run
        self._max_writes = max_writes_per_minute
        self._writes: deque[float] = deque()  # monotonic times of recent rescales
        self._timeout_s = request_timeout_seconds
        self._retry = retry
        self._backoff = wait_exponential_jitter(multiplier=retry.backoff_initial_seconds,
                                                max=retry.backoff_max_seconds,
                                                jitter=retry.backoff_initial_seconds)
        self._where = f"Deployment '{pool.deployment}' in namespace '{pool.namespace}'"
        self._log = log.bind(pool=self.pool, namespace=pool.namespace,
                             deployment=pool.deployment)

    async def current(self) -> PoolState:
        return _pool_state(await self._read_deployment())

    async def apply(self, decision: Decision) -> ActuationResult:
        if decision.kubernetes_replicas is None:
            return ActuationResult(self.pool, False, None, None,
                                   "decision leaves Kubernetes as it is")
        target = self._clamp(decision.kubernetes_replicas)
        deployment = await self._read_deployment()
        before = _pool_state(deployment)
        if before.desired == target:
            return ActuationResult(self.pool, False, before, before,
                                   f"already at {target} replicas")
        await self._refuse_competing_hpa()
        change = f"{before.desired} -> {target} replicas"
        if self._dry_run:
            self._log.info("kubernetes.dry_run", would_scale=change,
                           reason=decision.reason.summary)
            return ActuationResult(self.pool, False, before, before,
                                   f"dry run: would scale {change}")
        if self._write_cap_reached():
            self._log.warning("kubernetes.write_cap", skipped=change,
                              max_writes_per_minute=self._max_writes)
            return ActuationResult(self.pool, False, before, before,
                                   f"not scaled {change}: {self._max_writes} writes in the "
                                   "last minute already (max_writes_per_minute)")
        await self._retrying(UPDATE_SCALE, self._scale_to, target)
        self._writes.append(time.monotonic())
        self._log.info("kubernetes.scaled", change=change, reason=decision.reason.summary)
        await self._record_event(deployment, target, decision.reason)
        after = PoolState(ready=before.ready, starting=max(target - before.ready, 0),
                          desired=target, at=time.time())
        return ActuationResult(self.pool, True, before, after, f"scaled {change}")

    async def aclose(self) -> None:
        """Close the client this actuator built (a client passed in stays open)."""
        if self._owns_client:
            await asyncio.to_thread(self._client.close)

    def _clamp(self, replicas: int) -> int:
        clamped = min(max(replicas, self._pool.min_replicas), self._pool.max_replicas)
        if clamped != replicas:
            self._log.info("kubernetes.clamped", asked=replicas, replicas=clamped,
                           min_replicas=self._pool.min_replicas,
                           max_replicas=self._pool.max_replicas)
        return clamped

    def _write_cap_reached(self) -> bool:
        while self._writes and time.monotonic() - self._writes[0] > 60:
            self._writes.popleft()
        return len(self._writes) >= self._max_writes

    async def _read_deployment(self) -> client.V1Deployment:
        return await self._request(GET_DEPLOYMENT, self._apps.read_namespaced_deployment,
                                   self._pool.deployment, self._pool.namespace)

    async def _scale_to(self, replicas: int) -> None:
        """Read the scale and write it back changed, conditional on its resourceVersion."""
        scale = await self._call(GET_SCALE, self._apps.read_namespaced_deployment_scale,
                                 self._pool.deployment, self._pool.namespace)
        if scale.spec.replicas == replicas:  # someone did it meanwhile
            return
        scale.spec.replicas = replicas
        await self._call(UPDATE_SCALE, self._apps.replace_namespaced_deployment_scale,
                         self._pool.deployment, self._pool.namespace, scale)

    async def _refuse_competing_hpa(self) -> None:
        hpas = await self._request(LIST_HPAS,
                                   self._autoscaling.list_namespaced_horizontal_pod_autoscaler,
                                   self._pool.namespace)
        for hpa in hpas.items:
            ref = hpa.spec.scale_target_ref
            if ref.kind == "Deployment" and ref.name == self._pool.deployment and \
                    (ref.api_version or "apps/v1").startswith("apps/"):
                raise ConflictingAutoscaler(
                    f"{self._where} is already scaled by HorizontalPodAutoscaler "
                    f"'{hpa.metadata.name}': delete that HPA (or disable this Kubernetes pool) "
                    "so the two autoscalers do not fight over the replica count")

    async def _record_event(self, deployment: client.V1Deployment, replicas: int,
                            reason: Reason) -> None:
        """A Normal Event on the Deployment, as the HPA records; best effort, as client-go's."""
        now = datetime.now(UTC)
        meta = deployment.metadata
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta.name}.", namespace=meta.namespace),
            involved_object=client.V1ObjectReference(
                api_version="apps/v1", kind="Deployment", name=meta.name,
                namespace=meta.namespace, uid=meta.uid, resource_version=meta.resource_version),
            reason="SuccessfulRescale",
            message=f"New size: {replicas}; reason: {reason.summary}"[:1024],
            type="Normal", count=1, first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT, reporting_instance=os.environ.get("HOSTNAME", COMPONENT))
        try:
            await self._request(CREATE_EVENT, self._core.create_namespaced_event,
                                meta.namespace, event)
        except ActuatorError as exc:
            self._log.warning("kubernetes.event_not_recorded", error=str(exc))

    async def _request(self, call: _Call, method: Callable[..., T], *args: Any) -> T:
        """One API call, retried."""
        return await self._retrying(call, self._call, call, method, *args)

    async def _call(self, call: _Call, method: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(method, *args, _request_timeout=self._timeout_s)
        except ApiException as exc:
            if exc.status in TRANSIENT_STATUSES:
                raise  # for _retrying to judge
            raise self._error(call, exc) from None

    async def _retrying(self, call: _Call, attempt: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await `attempt(*args)` until it succeeds or the policy gives up on transient errors."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient),
            wait=self._wait,
            stop=stop_after_attempt(self._retry.attempts)
            | stop_before_delay(self._retry.total_seconds),
            before_sleep=self._log_retry,
        )
        try:
            return await retrying(attempt, *args)
        except RetryError as exc:
            attempts = exc.last_attempt.attempt_number
            raise Unavailable(
                f"{self._where}: gave up on {call.verb} {call.resource} after {attempts} "
                f"attempt{'s' if attempts > 1 else ''}; last answer: "
                f"{_describe(exc.last_attempt.exception())}") from None

    def _wait(self, state: RetryCallState) -> float:
        """409: re-read at once; 429: as long as Retry-After says; else exponential backoff."""
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, ApiException) and failure.status == 409:
            return 0.0
        if isinstance(failure, ApiException) and failure.status == 429:
            retry_after = _retry_after_seconds(failure)
            if retry_after is not None:
                return retry_after
        return self._backoff(state)

    def _log_retry(self, state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        status = failure.status if isinstance(failure, ApiException) else type(failure).__name__
        self._log.warning("kubernetes.retry", attempt=state.attempt_number, error=status,
                          sleep_s=round(state.upcoming_sleep, 3))

    def _error(self, call: _Call, exc: ApiException) -> ActuatorError:
        """The API's answer as an error that tells the operator what to fix."""
        said = _status_message(exc)
        if exc.status == 401:
            return AuthenticationFailed(f"{self._where}: the API server rejected the "
                                        f"credentials ({said})")
        if exc.status == 403:
            group = f"API group '{call.group}'" if call.group else "the core API group"
            return PermissionDenied(
                f"{self._where}: missing permission: verb '{call.verb}' on resource "
                f"'{call.resource}' ({group}) in namespace '{self._pool.namespace}'; grant it "
                f"to the controller's ServiceAccount (API server said: {said})")
        if exc.status == 404 and call.resource.startswith("deployments"):
            return TargetNotFound(f"{self._where} does not exist ({said})")
        return ActuatorError(f"{self._where}: {call.verb} {call.resource} failed with HTTP "
                             f"{exc.status}: {said}")


def _pool_state(deployment: client.V1Deployment) -> PoolState:
    desired = deployment.spec.replicas or 0
    ready = (deployment.status.ready_replicas or 0) if deployment.status else 0
    return PoolState(ready=ready, starting=max(desired - ready, 0), desired=desired,
                     at=time.time())


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_STATUSES
    return isinstance(exc, urllib3.exceptions.HTTPError)  # timeouts, refused connections


def _retry_after_seconds(exc: ApiException) -> float | None:
    value = (exc.headers or {}).get("Retry-After")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:  # an HTTP date: rare from kube-apiserver, back off instead
        return None


def _describe(failure: BaseException | None) -> str:
    if not isinstance(failure, ApiException):
        return repr(failure)
    retry_after = _retry_after_seconds(failure)
    wait = f" (Retry-After: {retry_after:g} s)" if retry_after is not None else ""
    return f"HTTP {failure.status}: {_status_message(failure)}{wait}"


def _status_message(exc: ApiException) -> str:
    """The message of the Status object the API server answered with, else the HTTP reason."""
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"HTTP {exc.status} {exc.reason}"
