"""deploy/: manifests valid against Kubernetes' own schemas, RBAC no wider than what a running
controller uses, Prometheus rules that promtool accepts, a dashboard and rules on metrics the
daemon exports, a Modal app named as the config says, a Dockerfile that runs unprivileged."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from daemon_world import busy_page, eventually
from emulators.kube_api import request_info
from fixtures.realparts import require
from vllm_autoscaler.config.loader import load_config, shipped_path
from vllm_autoscaler.controller.profile import load_profile
from vllm_autoscaler.controller.telemetry import Telemetry

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SCHEMA_VERSION = kubernetes_validate.latest_version()
CLUSTER_CONFIG = DEPLOY / "kubernetes" / "config.yaml"


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    """What `kubectl apply -k deploy/kubernetes` would send (kustomize as kubectl builds it)."""
    require(shutil.which("kubectl") is not None, "no kubectl on PATH")
    built = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "kubernetes")],
                           capture_output=True, text=True, timeout=60, check=True)
    return list(yaml.safe_load_all(built.stdout))


def by_kind(manifests: list[dict], kind: str) -> list[dict]:
    return [m for m in manifests if m["kind"] == kind]


def deployment(manifests: list[dict], controller: bool) -> dict:
    """The controller's Deployment, or (controller=False) the example vLLM one."""
    [found] = [d for d in by_kind(manifests, "Deployment")
               if (d["metadata"]["name"] == "vllm-autoscaler") == controller]
    return found


def test_every_manifest_is_valid_for_a_recent_kubernetes(manifests):
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Namespace", "Role",
                     "RoleBinding", "Service", "Service", "ServiceAccount"]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, SCHEMA_VERSION, strict=True)


def test_the_configmap_holds_a_valid_config_for_the_example(manifests):
    [configmap] = by_kind(manifests, "ConfigMap")
    assert configmap["data"]["config.yaml"] == CLUSTER_CONFIG.read_text()
    config = load_config(CLUSTER_CONFIG)
    for target in config.targets:
        load_profile(target.profile)
    deployments = {m["metadata"]["name"] for m in by_kind(manifests, "Deployment")}
    assert {t.kubernetes.deployment for t in config.targets} <= deployments
    assert config.leader_election.namespace == configmap["metadata"]["namespace"]


def test_the_controller_runs_hardened_with_probes(manifests):
    spec = deployment(manifests, controller=True)["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    configmap = next(v for v in pod["volumes"] if "configMap" in v)["configMap"]["name"]
    assert configmap.startswith("vllm-autoscaler-config-")  # the generated, hashed name


def test_the_example_vllm_waits_for_the_model_and_asks_for_a_gpu(manifests):
    vllm = deployment(manifests, controller=False)
    [container] = vllm["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["initialDelaySeconds"] >= 120
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    scraped = {s["metadata"]["name"]: s["metadata"]["annotations"]["prometheus.io/port"]
               for s in by_kind(manifests, "Service")}
    assert scraped == {"vllm-autoscaler": "8080", vllm["metadata"]["name"]: "8000"}


def grants(role: dict) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


async def test_the_role_grants_exactly_what_a_running_controller_uses(manifests, make_daemon,
                                                                      replica, kube):
    """A controller leads, scales a Deployment up (an Event recorded), then stops (releasing the
    Lease); every request it sent, as RBAC names it, against what the Role grants."""
    daemon = make_daemon()
    task = asyncio.create_task(daemon.run())
    await eventually(lambda: daemon.is_leader, what="the Lease")
    finished = itertools.count(0, 2)

    def busy_until_rescaled() -> list:
        replica.text = busy_page(finished=next(finished))  # a sustained 20 requests/s
        return kube.list("events")
    await eventually(busy_until_rescaled, what="a rescale Event")
    daemon.stop()
    assert await task == 0
    used = set()
    for r in kube.requests:
        info = request_info(r.method, r.path, r.query)
        if info is not None:
            resource = info.rt.resource + (f"/{info.subresource}" if info.subresource else "")
            used.add((info.rt.group, resource, info.verb))

    [role] = by_kind(manifests, "Role")
    assert grants(role) == used
    assert not by_kind(manifests, "ClusterRole") and not by_kind(manifests, "ClusterRoleBinding")
    assert "*" not in json.dumps(role["rules"])
    config = load_config(CLUSTER_CONFIG)
    for rule in role["rules"]:  # whatever can be limited by name is
        if set(rule["verbs"]) & {"get", "update"} and rule["resources"][0].startswith("deploy"):
            assert rule["resourceNames"] == [t.kubernetes.deployment for t in config.targets]
        if rule["resources"] == ["leases"] and rule["verbs"] != ["create"]:
            assert rule["resourceNames"] == [config.leader_election.lease_name]
    [binding] = by_kind(manifests, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    pod = deployment(manifests, controller=True)["spec"]["template"]["spec"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


def exported_names() -> set[str]:
    """Every series name the daemon's /metrics can carry."""
    return {sample.name for family in Telemetry().registry.collect()
            for sample in family.samples} | {
        f"{family.name}{suffix}" for family in Telemetry().registry.collect()
        for suffix in ("", "_total", "_bucket", "_count", "_sum", "_info")}


def referenced_names(text: str) -> set[str]:
    return set(re.findall(r"\bvllm_autoscaler_[a-z_]+", text))


def test_alert_rules_pass_promtool_and_use_exported_metrics():
    require(shutil.which("promtool") is not None, "no promtool on PATH (Debian: prometheus)")
    rules = DEPLOY / "prometheus" / "alert-rules.yaml"
    checked = subprocess.run(["promtool", "check", "rules", str(rules)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    used = referenced_names(rules.read_text())
    assert used and used <= exported_names()


def test_the_dashboard_plots_exported_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "vllm-autoscaler.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = referenced_names("\n".join(exprs))
    assert used <= exported_names()
    # Each family the daemon exports is on the dashboard.
    assert {f.name for f in Telemetry().registry.collect()} <= {
        re.sub(r"_(total|bucket|info)$", "", name) for name in used}


def test_the_scrape_config_keeps_annotated_services_on_their_annotated_port():
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "scrape-config.yaml").read_text())
    [job] = scrape["scrape_configs"]
    keep, path, address = job["relabel_configs"][:3]
    assert re.fullmatch(keep["regex"], "true") and not re.fullmatch(keep["regex"], "false")
    joined = ";".join(["10.1.2.3:8000", "8080"])  # source labels joined as Prometheus does
    rewritten = re.fullmatch(address["regex"], joined).expand(
        address["replacement"].replace("$", "\\"))
    assert rewritten == "10.1.2.3:8080"
    assert path["target_label"] == "__metrics_path__"


def load_modal_app():
    spec = importlib.util.spec_from_file_location("vllm_app", DEPLOY / "modal" / "vllm_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config", [shipped_path("default.yaml"), CLUSTER_CONFIG],
                         ids=["default", "cluster"])
def test_the_modal_app_is_named_and_sized_as_the_config_says(config):
    app = load_modal_app()
    [pool] = [t.modal for t in load_config(config).targets]
    assert app.app.name == pool.app
    with warnings.catch_warnings():  # no other public way to list an app's functions yet
        warnings.simplefilter("ignore")
        assert list(app.app.registered_functions) == [pool.function]
    assert (app.MAX_INPUTS, app.MAX_CONTAINERS, app.SCALEDOWN_WINDOW_S) == (
        pool.max_inputs, pool.max_containers, pool.scaledown_window_seconds)
    assert (app.MIN_CONTAINERS, app.BUFFER_CONTAINERS) == (pool.min_containers,
                                                          pool.buffer_containers)


def test_the_image_is_multi_stage_slim_and_unprivileged():
    stages = re.split(r"^FROM ", (DEPLOY / "Dockerfile").read_text(), flags=re.M)[1:]
    assert len(stages) == 2
    final = stages[-1]
    assert final.startswith("python:3.11-slim\n")
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert re.search(r"^USER 10001", final, flags=re.M)
    assert not re.search(r"apt-get|build-essential|gcc|pip install", final)
    assert (DEPLOY.parent / ".dockerignore").read_text().count(".venv") >= 2
