"""The Kubernetes actuator, driving the real `kubernetes` client against the API emulator."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import yaml
from emulators.kube_api import KubeApi
from kubernetes import client

from vllm_autoscaler.actuators.errors import (
    ActuatorError,
    ConflictingAutoscaler,
    PermissionDenied,
    TargetNotFound,
    Unavailable,
)
from vllm_autoscaler.actuators.kubernetes import (
    KubernetesActuator,
    RetryPolicy,
    kubernetes_api_client,
)
from vllm_autoscaler.config.schema import KubernetesPool
from vllm_autoscaler.controller.types import Decision, PoolState, Reason

SCALE = "/apis/apps/v1/namespaces/default/deployments/vllm/scale"
FAST = RetryPolicy(attempts=4, total_seconds=5, backoff_initial_seconds=0.05,
                   backoff_max_seconds=0.2)


def decision(replicas: int | None, summary: str = "queue above target") -> Decision:
    return Decision(replicas, None, None, Reason("waiting", summary, {"waiting": 12}))


def writes(kube: KubeApi) -> list:
    return [r for r in kube.requests if r.method not in ("GET", "HEAD")
            and not r.path.endswith("/events")]


@pytest.fixture
def actuator(kube: KubeApi, kube_client: client.ApiClient) -> KubernetesActuator:
    kube.add_deployment("vllm", replicas=2)
    pool = KubernetesPool(namespace="default", deployment="vllm", min_replicas=1, max_replicas=8)
    return KubernetesActuator(pool, api_client=kube_client, retry=FAST,
                              request_timeout_seconds=1.0)


def replicas(kube: KubeApi) -> int:
    return kube.get("deployments", "vllm")["spec"]["replicas"]


async def test_scales_through_the_scale_subresource(kube, actuator):
    result = await actuator.apply(decision(5))

    assert result.changed and result.pool == "kubernetes"
    assert (result.before.desired, result.after.desired) == (2, 5)
    assert replicas(kube) == 5
    [put] = writes(kube)
    assert (put.method, put.path) == ("PUT", SCALE)
    assert put.body["spec"]["replicas"] == 5
    assert put.body["metadata"]["resourceVersion"] == "1"  # the write is conditional


async def test_current_reports_ready_starting_and_desired(kube, actuator):
    kube.ready_delay = 0.5
    await actuator.apply(decision(5))

    state = await actuator.current()
    assert (state.ready, state.starting, state.desired) == (2, 3, 5)
    deadline = time.monotonic() + 5
    while (state := await actuator.current()).ready < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (state.ready, state.starting, state.desired) == (5, 0, 5)


async def test_scale_down_reports_no_negative_starting(kube, actuator):
    result = await actuator.apply(decision(1))
    assert result.after == PoolState(ready=2, starting=0, desired=1, at=result.after.at)
    assert (await actuator.current()).ready == 1


async def test_no_write_when_nothing_changes(kube, actuator):
    result = await actuator.apply(decision(2))

    assert not result.changed
    assert [(r.method, r.path) for r in kube.requests] == [
        ("GET", "/apis/apps/v1/namespaces/default/deployments/vllm")]


async def test_decision_without_kubernetes_replicas_changes_nothing(kube, actuator):
    result = await actuator.apply(decision(None))
    assert not result.changed and kube.requests == []


@pytest.mark.parametrize(("asked", "expected"), [(0, 1), (50, 8)])
async def test_clamps_to_configured_bounds(kube, actuator, asked, expected):
    await actuator.apply(decision(asked))
    assert replicas(kube) == expected


async def test_conflict_rereads_and_retries(kube, actuator):
    # A real race: the Deployment changes while our conditional write is on its way.
    held = kube.inject(None, method="PUT", path="/scale$", delay=0.5)
    task = asyncio.create_task(actuator.apply(decision(5)))
    while held.times:
        await asyncio.sleep(0.01)
    kube.patch("deployments", "vllm", {"metadata": {"labels": {"touched": "yes"}}})
    result = await task

    assert result.changed and replicas(kube) == 5
    puts = [r for r in kube.requests if r.method == "PUT"]
    assert [p.status for p in puts] == [409, 200]
    assert int(puts[1].body["metadata"]["resourceVersion"]) > int(
        puts[0].body["metadata"]["resourceVersion"])


async def test_throttling_waits_as_long_as_retry_after_says(kube, actuator):
    kube.inject(429, method="PUT", path="/scale$", headers={"Retry-After": "1"})
    await actuator.apply(decision(4))

    throttled, accepted = [r for r in kube.requests if r.method == "PUT"]
    assert (throttled.status, accepted.status) == (429, 200)
    assert 1.0 <= accepted.at - throttled.at < 2.0
    assert replicas(kube) == 4


async def test_throttling_longer_than_the_budget_gives_up_at_once(kube, actuator):
    kube.inject(429, method="PUT", path="/scale$", headers={"Retry-After": "60"})
    started = time.monotonic()
    with pytest.raises(Unavailable, match="429"):
        await actuator.apply(decision(4))
    assert time.monotonic() - started < 1.0


async def test_outage_then_recovery(kube, actuator):
    kube.inject(503, method="GET", path="/deployments/vllm$", times=3)
    state = await actuator.current()

    assert state.desired == 2
    statuses = [r.status for r in kube.requests]
    assert statuses == [503, 503, 503, 200]


async def test_persistent_server_errors_give_up_within_bounds(kube, actuator):
    kube.inject(500, method="PUT", times=None)
    started = time.monotonic()
    with pytest.raises(Unavailable, match=r"update deployments/scale after 4 attempts"):
        await actuator.apply(decision(4))

    assert time.monotonic() - started < FAST.total_seconds
    assert len([r for r in kube.requests if r.method == "PUT"]) == FAST.attempts
    assert replicas(kube) == 2


async def test_timeouts_are_retried(kube, actuator):
    kube.inject(None, method="GET", delay=3, times=1)  # past the 1 s request timeout
    started = time.monotonic()
    assert (await actuator.current()).desired == 2
    assert time.monotonic() - started < 2.5


async def test_forbidden_names_the_missing_permission(kube, actuator):
    kube.inject(403, method="PUT", path="/scale$", times=None)
    with pytest.raises(PermissionDenied) as raised:
        await actuator.apply(decision(4))
    message = str(raised.value)
    assert "verb 'update' on resource 'deployments/scale'" in message
    assert "namespace 'default'" in message and "API group 'apps'" in message
    assert "cannot update resource" in message  # the API server's own words are kept


async def test_missing_deployment_is_named(kube, kube_client):
    pool = KubernetesPool(namespace="serving", deployment="nope")
    actuator = KubernetesActuator(pool, api_client=kube_client, retry=FAST)
    with pytest.raises(TargetNotFound, match="Deployment 'nope' in namespace 'serving' does not"):
        await actuator.apply(decision(3))


async def test_refuses_to_fight_an_hpa(kube, actuator):
    kube.add_hpa("other", deployment="not-vllm")
    await actuator.apply(decision(3))  # an HPA on another Deployment is no competitor

    kube.add_hpa("vllm-hpa", deployment="vllm")
    with pytest.raises(ConflictingAutoscaler, match="HorizontalPodAutoscaler 'vllm-hpa'"):
        await actuator.apply(decision(4))
    assert replicas(kube) == 3


async def test_each_rescale_records_an_event(kube, actuator):
    await actuator.apply(decision(4, "forecast 41 req/s needs 4 replicas"))
    await actuator.apply(decision(4))

    [event] = kube.list("events", "default")
    deployment = kube.get("deployments", "vllm")
    assert event["reason"] == "SuccessfulRescale" and event["type"] == "Normal"
    assert event["message"] == "New size: 4; reason: forecast 41 req/s needs 4 replicas"
    assert event["involvedObject"]["uid"] == deployment["metadata"]["uid"]
    assert event["involvedObject"]["kind"] == "Deployment"
    assert event["source"]["component"] == "vllm-autoscaler"


async def test_a_lost_event_does_not_undo_the_rescale(kube, actuator):
    kube.inject(403, method="POST", path="/events$", times=None)
    assert (await actuator.apply(decision(4))).changed
    assert replicas(kube) == 4


async def test_dry_run_changes_nothing(kube, kube_client):
    kube.add_deployment("vllm", replicas=2)
    actuator = KubernetesActuator(KubernetesPool(deployment="vllm"), api_client=kube_client,
                                  dry_run=True)
    result = await actuator.apply(decision(6))

    assert not result.changed and "would scale 2 -> 6" in result.message
    assert writes(kube) == [] and kube.list("events") == []
    assert replicas(kube) == 2


async def test_writes_per_minute_are_capped(kube, kube_client):
    kube.add_deployment("vllm", replicas=1)
    actuator = KubernetesActuator(KubernetesPool(deployment="vllm"), api_client=kube_client,
                                  max_writes_per_minute=2)
    results = [await actuator.apply(decision(n)) for n in (2, 3, 4)]

    assert [r.changed for r in results] == [True, True, False]
    assert "max_writes_per_minute" in results[2].message
    assert replicas(kube) == 3


async def test_kubectl_and_the_actuator_see_each_others_changes(kube, actuator, kubectl):
    await actuator.apply(decision(3))
    shown = json.loads(kubectl("get", "deploy", "vllm", "-o", "json"))
    assert shown["spec"]["replicas"] == 3

    kubectl("scale", "deploy/vllm", "--replicas=6")
    assert (await actuator.current()).desired == 6


async def test_client_from_kubeconfig(kube):
    kube.add_deployment("vllm", replicas=2)
    api_client = kubernetes_api_client(str(kube.kubeconfig))
    actuator = KubernetesActuator(KubernetesPool(deployment="vllm"), api_client=api_client)
    try:
        assert (await actuator.current()).desired == 2
    finally:
        api_client.close()


async def test_client_in_cluster(kube, tmp_path, monkeypatch):
    """A pod's view: service host/port in the environment, token and CA in files."""
    kube.add_deployment("vllm", replicas=2)
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text(kube.token)
    ca.write_bytes(kube.ca_cert.read_bytes())
    host, port = kube.base_url.removeprefix("https://").split(":")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    monkeypatch.setattr("kubernetes.config.incluster_config.SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr("kubernetes.config.incluster_config.SERVICE_CERT_FILENAME", str(ca))

    actuator = KubernetesActuator(KubernetesPool(deployment="vllm"))
    try:
        assert (await actuator.apply(decision(3))).changed
    finally:
        await actuator.aclose()
    assert replicas(kube) == 3


async def test_a_server_certificate_the_kubeconfig_does_not_trust_is_refused(kube, tmp_path):
    """TLS verification stays on: without the emulator's CA the client must not connect."""
    kube.add_deployment("vllm", replicas=2)
    untrusting = yaml.safe_load(kube.kubeconfig.read_text())
    del untrusting["clusters"][0]["cluster"]["certificate-authority-data"]
    path = tmp_path / "no-ca.yaml"
    path.write_text(yaml.safe_dump(untrusting))
    api_client = kubernetes_api_client(str(path))
    actuator = KubernetesActuator(KubernetesPool(deployment="vllm"), api_client=api_client,
                                  retry=RetryPolicy(attempts=1))  # fmt: skip
    try:
        with pytest.raises(ActuatorError, match="CERTIFICATE_VERIFY_FAILED"):
            await actuator.apply(decision(5))
    finally:
        api_client.close()
    assert replicas(kube) == 2


def test_unusable_kubeconfig_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ActuatorError, match="cannot configure the Kubernetes client"):
        kubernetes_api_client(str(tmp_path / "missing"))
