"""The Kubernetes API emulator speaks the API as a real server does, to real clients."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
import urllib3
from kubernetes import client, dynamic
from kubernetes.client import ApiException
from kubernetes.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

DEPLOYMENT = "/apis/apps/v1/namespaces/default/deployments/vllm"


@pytest.fixture
def apps(kube_client: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(kube_client)


def status_of(raised: pytest.ExceptionInfo[ApiException]) -> dict:
    return json.loads(raised.value.body)


def test_resource_versions_grow_and_a_stale_update_conflicts(kube, apps):
    kube.add_deployment("vllm", replicas=1)
    first = apps.read_namespaced_deployment("vllm", "default")
    first.spec.replicas = 2
    second = apps.replace_namespaced_deployment("vllm", "default", first)
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    assert second.metadata.generation == first.metadata.generation + 1

    first.spec.replicas = 3  # still carries the old resourceVersion
    with pytest.raises(ApiException) as raised:
        apps.replace_namespaced_deployment("vllm", "default", first)
    assert raised.value.status == 409
    assert status_of(raised) | {"details": None} == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": "Conflict", "code": 409, "details": None,
        "message": 'Operation cannot be fulfilled on deployments.apps "vllm": the object has '
                   "been modified; please apply your changes to the latest version and try again"}
    assert kube.get("deployments", "vllm")["spec"]["replicas"] == 2


def test_scale_subresource_with_every_patch_type(kube, apps):
    kube.add_deployment("vllm", replicas=1)
    scale = apps.read_namespaced_deployment_scale("vllm", "default")
    assert (scale.kind, scale.spec.replicas, scale.status.selector) == ("Scale", 1, "app=vllm")

    apps.patch_namespaced_deployment_scale("vllm", "default", {"spec": {"replicas": 2}})
    apps.patch_namespaced_deployment_scale(
        "vllm", "default", [{"op": "replace", "path": "/spec/replicas", "value": 3}])
    apps.patch_namespaced_deployment_scale(
        "vllm", "default", {"spec": {"replicas": 4}},
        _content_type="application/merge-patch+json")
    sent = [r.headers["Content-Type"] for r in kube.requests if r.method == "PATCH"]
    assert sent == ["application/strategic-merge-patch+json", "application/json-patch+json",
                    "application/merge-patch+json"]
    assert kube.get("deployments", "vllm")["spec"]["replicas"] == 4

    stale = scale
    stale.spec.replicas = 9
    with pytest.raises(ApiException) as raised:
        apps.replace_namespaced_deployment_scale("vllm", "default", stale)
    assert raised.value.status == 409


def test_invalid_replicas_are_rejected_with_the_field_named(kube, apps):
    kube.add_deployment("vllm")
    with pytest.raises(ApiException) as raised:
        apps.patch_namespaced_deployment_scale("vllm", "default", {"spec": {"replicas": -1}})
    assert raised.value.status == 422
    status = status_of(raised)
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "spec.replicas"
    assert "must be greater than or equal to 0" in status["message"]


def test_a_deployment_without_selector_is_invalid(kube, kube_client):
    # The dynamic client, unlike the typed one, sends what it is given.
    deployments = dynamic.DynamicClient(kube_client).resources.get(api_version="apps/v1",
                                                                   kind="Deployment")
    body = {"metadata": {"name": "bad"}, "spec": {"template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    with pytest.raises(dynamic.exceptions.UnprocessibleEntityError) as raised:
        deployments.create(body=body, namespace="default")
    assert "spec.selector: Required value" in json.loads(raised.value.body)["message"]


def test_not_found_and_already_exists(kube, apps):
    with pytest.raises(ApiException) as raised:
        apps.read_namespaced_deployment_scale("ghost", "default")
    assert raised.value.status == 404
    assert status_of(raised)["message"] == 'deployments.apps "ghost" not found'
    assert status_of(raised)["details"] == {"name": "ghost", "group": "apps",
                                            "kind": "deployments"}

    kube.add_deployment("vllm")
    with pytest.raises(ApiException) as raised:
        kube_dep = kube.get("deployments", "vllm")
        apps.create_namespaced_deployment("default", {k: kube_dep[k] for k in ("metadata", "spec")})
    assert (raised.value.status, status_of(raised)["reason"]) == (409, "AlreadyExists")


def test_deployment_lifecycle(kube, apps):
    kube.add_deployment("a", namespace="ns1")
    kube.add_deployment("b", namespace="ns2")
    assert [d.metadata.name for d in apps.list_deployment_for_all_namespaces().items] == ["a", "b"]
    assert [d.metadata.name for d in apps.list_namespaced_deployment("ns2").items] == ["b"]

    apps.patch_namespaced_deployment("a", "ns1", {"metadata": {"labels": {"tier": "gpu"}}})
    assert [d.metadata.name for d in
            apps.list_deployment_for_all_namespaces(label_selector="tier=gpu").items] == ["a"]
    apps.delete_namespaced_deployment("a", "ns1")
    with pytest.raises(ApiException) as raised:
        apps.read_namespaced_deployment("a", "ns1")
    assert raised.value.status == 404


def test_dry_run_validates_without_persisting(kube, apps):
    kube.add_deployment("vllm", replicas=1)
    answer = apps.patch_namespaced_deployment_scale("vllm", "default", {"spec": {"replicas": 5}},
                                                    dry_run="All")
    assert answer.spec.replicas == 5
    assert kube.get("deployments", "vllm")["spec"]["replicas"] == 1


def test_writes_to_the_deployment_keep_its_status(kube, apps):
    kube.add_deployment("vllm", replicas=2)
    deployment = apps.read_namespaced_deployment("vllm", "default")
    deployment.status.ready_replicas = 99
    deployment.metadata.labels["x"] = "y"
    answer = apps.replace_namespaced_deployment("vllm", "default", deployment)
    assert answer.status.ready_replicas == 2


def test_pods_turn_ready_after_the_delay(kube, apps):
    kube.ready_delay = 0.3
    kube.add_deployment("vllm", replicas=0)
    apps.patch_namespaced_deployment_scale("vllm", "default", {"spec": {"replicas": 3}})
    status = apps.read_namespaced_deployment("vllm", "default").status
    assert (status.replicas, status.updated_replicas, status.ready_replicas) == (3, 3, None)

    time.sleep(0.5)
    status = apps.read_namespaced_deployment("vllm", "default").status
    assert (status.ready_replicas, status.available_replicas) == (3, 3)

    apps.patch_namespaced_deployment_scale("vllm", "default", {"spec": {"replicas": 1}})
    assert apps.read_namespaced_deployment("vllm", "default").status.ready_replicas == 1


def test_leases_for_leader_election(kube, kube_client):
    leases = client.CoordinationV1Api(kube_client)
    now = datetime.now(UTC)
    spec = client.V1LeaseSpec(holder_identity="pod-a", lease_duration_seconds=15,
                              acquire_time=now, renew_time=now, lease_transitions=0)
    created = leases.create_namespaced_lease(
        "default", client.V1Lease(metadata=client.V1ObjectMeta(name="autoscaler"), spec=spec))
    assert created.spec.acquire_time == now  # MicroTime survives the round trip

    created.spec.renew_time = datetime.now(UTC)
    renewed = leases.replace_namespaced_lease("autoscaler", "default", created)
    # A contender still holding the old version loses the race.
    created.spec.holder_identity = "pod-b"
    with pytest.raises(ApiException) as raised:
        leases.replace_namespaced_lease("autoscaler", "default", created)
    assert raised.value.status == 409
    assert leases.read_namespaced_lease("autoscaler", "default").spec.holder_identity == "pod-a"

    # A patch naming the current version succeeds: the contender takes over.
    takeover = {"spec": {"holderIdentity": "pod-b"},
                "metadata": {"resourceVersion": renewed.metadata.resource_version}}
    leases.patch_namespaced_lease("autoscaler", "default", takeover)
    assert leases.read_namespaced_lease("autoscaler", "default").spec.holder_identity == "pod-b"
    leases.delete_namespaced_lease("autoscaler", "default")
    assert leases.list_namespaced_lease("default").items == []


def test_the_clients_lease_lock_elects_one_leader(kube, kube_client):
    """The `kubernetes` client's own LeaseLock (leader election) works against the emulator."""
    def candidate(identity: str) -> LeaseLock:
        lock = LeaseLock("autoscaler", "default", identity)
        lock.api_instance = client.CoordinationV1Api(kube_client)
        return lock

    def record(identity: str) -> LeaderElectionRecord:
        now = str(datetime.now())
        return LeaderElectionRecord(identity, "15", now, now)

    a, b = candidate("pod-a"), candidate("pod-b")
    assert a.create("autoscaler", "default", record("pod-a"))
    assert not b.create("autoscaler", "default", record("pod-b"))  # 409 AlreadyExists
    found, held = b.get("autoscaler", "default")
    assert found and held.holder_identity == "pod-a"

    assert a.update("autoscaler", "default", record("pod-a"))  # a renews...
    assert not b.update("autoscaler", "default", record("pod-b"))  # ...so b's copy is stale
    assert kube.get("leases", "autoscaler")["spec"]["holderIdentity"] == "pod-a"


def test_events_are_created_and_selected(kube, kube_client):
    core = client.CoreV1Api(kube_client)
    for name in ("vllm", "other"):
        core.create_namespaced_event("default", client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}."),
            involved_object=client.V1ObjectReference(kind="Deployment", name=name,
                                                     namespace="default"),
            reason="SuccessfulRescale", message="New size: 2"))
    selected = core.list_namespaced_event("default",
                                          field_selector="involvedObject.name=vllm").items
    assert [e.involved_object.name for e in selected] == ["vllm"]
    assert selected[0].metadata.name.startswith("vllm.")

    with pytest.raises(ApiException) as raised:
        core.create_namespaced_event("default", client.CoreV1Event(
            metadata=client.V1ObjectMeta(name="x"),
            involved_object=client.V1ObjectReference(kind="Deployment", name="v",
                                                     namespace="elsewhere")))
    assert raised.value.status == 422


def test_faults_answer_with_status_headers_and_delays(kube, apps):
    kube.add_deployment("vllm")
    throttle = kube.inject(429, method="GET", path="/scale$", headers={"Retry-After": "7"})
    with pytest.raises(ApiException) as raised:
        apps.read_namespaced_deployment_scale("vllm", "default")
    assert (raised.value.status, raised.value.headers["Retry-After"]) == (429, "7")
    assert throttle.times == 0
    assert apps.read_namespaced_deployment_scale("vllm", "default").spec.replicas == 1

    kube.inject(403, method="PATCH")
    with pytest.raises(ApiException) as raised:
        apps.patch_namespaced_deployment_scale("vllm", "default", {"spec": {"replicas": 2}})
    assert status_of(raised)["message"] == (
        'deployments.apps "vllm" is forbidden: User "system:serviceaccount:vllm-autoscaler:'
        'controller" cannot patch resource "deployments/scale" in API group "apps" in the '
        'namespace "default"')

    kube.inject(None, delay=1.0)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        apps.read_namespaced_deployment("vllm", "default", _request_timeout=0.2)


def test_every_request_is_recorded(kube, apps):
    kube.add_deployment("vllm")
    apps.patch_namespaced_deployment_scale("vllm", "default", {"spec": {"replicas": 2}},
                                           field_manager="tests")
    [patch] = kube.recorded("PATCH", "/scale$")
    assert patch.body == {"spec": {"replicas": 2}}
    assert patch.query == {"fieldManager": "tests"}
    assert patch.status == 200 and patch.headers["Authorization"] == f"Bearer {kube.token}"


def test_requests_without_the_token_are_unauthorized(kube):
    pool = urllib3.PoolManager(ca_certs=str(kube.ca_cert))
    answer = pool.request("GET", f"{kube.base_url}/apis/apps/v1/namespaces/default/deployments")
    assert answer.status == 401 and answer.json()["reason"] == "Unauthorized"


def test_legacy_discovery_serves_the_dynamic_client(kube, kube_client):
    kube.add_deployment("vllm", replicas=2)
    dynamic_client = dynamic.DynamicClient(kube_client)
    resources = dynamic_client.resources
    deployments = resources.get(api_version="apps/v1", kind="Deployment")
    assert deployments.get(name="vllm", namespace="default").spec.replicas == 2
    scale = dynamic_client.get(deployments.scale, name="vllm", namespace="default")
    assert (scale.kind, scale.spec.replicas) == ("Scale", 2)
    for group_version, kind in (("autoscaling/v2", "HorizontalPodAutoscaler"),
                                ("coordination.k8s.io/v1", "Lease"), ("v1", "Event")):
        assert resources.get(api_version=group_version, kind=kind).namespaced


def test_kubectl_gets_scales_and_reads_raw(kube, kubectl):
    kube.add_deployment("vllm", replicas=2)
    kube.add_hpa("vllm-hpa", deployment="vllm")

    table = kubectl("get", "deploy").splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert table[1].split()[:4] == ["vllm", "2/2", "2", "2"]
    assert kubectl("get", "hpa", "-o", "name").strip() == \
        "horizontalpodautoscaler.autoscaling/vllm-hpa"

    assert kubectl("scale", "deploy/vllm", "--replicas=3").strip() == "deployment.apps/vllm scaled"
    listed = json.loads(kubectl("get", "deploy", "-o", "json"))
    assert [d["spec"]["replicas"] for d in listed["items"]] == [3]
    raw = json.loads(kubectl("get", "--raw", f"{DEPLOYMENT}/scale"))
    assert (raw["kind"], raw["spec"]["replicas"]) == ("Scale", 3)
    [patch] = kube.recorded("PATCH")
    assert patch.headers["Content-Type"] == "application/merge-patch+json"


MANIFEST = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx}]}
"""


def test_kubectl_applies_manifests_with_server_side_field_validation(kube, kubectl, tmp_path):
    manifest = tmp_path / "web.yaml"
    manifest.write_text(MANIFEST)
    assert kubectl("apply", "-f", str(manifest)).strip() == "deployment.apps/web created"
    manifest.write_text(MANIFEST.replace("replicas: 2", "replicas: 4"))
    assert kubectl("apply", "-f", str(manifest)).strip() == "deployment.apps/web configured"
    assert kube.get("deployments", "web")["spec"]["replicas"] == 4

    manifest.write_text(MANIFEST.replace("replicas: 2", "replicaz: 2"))
    typo = kubectl.run("apply", "-f", str(manifest))
    assert typo.returncode != 0
    assert "strict decoding error" in typo.stderr and "'replicaz' was unexpected" in typo.stderr
