"""The daemon's tick loop against the Kubernetes API emulator, the local Modal control plane and
the real direct-scrape source reading a stand-in vLLM replica (conftest.py)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import structlog
from daemon_world import APP, DEPLOYMENT, FUNCTION, busy_page, eventually
from emulators.vllm_history import vllm_history
from fixtures.realparts import PrometheusServer
from prometheus_client.parser import text_string_to_metric_families

UPDATES = "FunctionUpdateSchedulingParams"
SCALE = f"/deployments/{DEPLOYMENT}/scale$"
NO_ELECTION = "leader_election.enabled=false"


def replicas(kube) -> int:
    return kube.get("deployments", DEPLOYMENT)["spec"]["replicas"]


def metric(daemon, name: str, **labels: str) -> float | None:
    """A sample of the daemon's /metrics registry."""
    for family in text_string_to_metric_families(daemon.telemetry.render().decode()):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return None


async def quiet_then_busy(daemon, replica):
    """A quiet tick (the scrape source's first look has no rates), then a busy one."""
    await daemon.tick()
    await asyncio.sleep(0.5)
    replica.text = busy_page(finished=3)
    return (await daemon.tick())["tiny"]


async def test_a_burst_scales_both_pools(make_daemon, replica, kube, world):
    daemon = make_daemon(NO_ELECTION)
    with structlog.testing.capture_logs() as logs:
        outcome = await quiet_then_busy(daemon, replica)
    decision = outcome.decision
    assert 1 < decision.kubernetes_replicas <= 10 and 0 < decision.modal_min_containers <= 10
    assert replicas(kube) == decision.kubernetes_replicas
    overrides = world.function(APP, FUNCTION).overrides
    assert overrides.min_containers == decision.modal_min_containers
    assert overrides.scaledown_window == 30
    assert metric(daemon, "vllm_autoscaler_desired_capacity", target="tiny",
                  pool="kubernetes") == decision.kubernetes_replicas
    assert metric(daemon, "vllm_autoscaler_decision_info", target="tiny",
                  driver=decision.reason.driver) == 1
    records = [r for r in logs if r["event"] == "decision"]
    assert len(records) == 2  # one per tick for the one target
    busy = records[-1]
    assert busy["inputs"]["waiting"] == 20 and busy["inputs"]["pools"]["kubernetes"]["desired"] == 1
    assert busy["outputs"]["kubernetes_replicas"] == decision.kubernetes_replicas
    assert busy["reason"]["summary"] == decision.reason.summary
    assert busy["applied"]["kubernetes"].startswith("scaled 1 -> ")


async def test_unreadable_metrics_skip_the_target_and_write_nothing(make_daemon, replica, kube,
                                                                   world):
    daemon = make_daemon(NO_ELECTION)
    await quiet_then_busy(daemon, replica)
    scaled_to, writes = replicas(kube), len(world.received(UPDATES))
    await replica.stop()
    with structlog.testing.capture_logs() as logs:
        outcome = (await daemon.tick())["tiny"]
    assert outcome.decision is None
    assert replicas(kube) == scaled_to and len(world.received(UPDATES)) == writes
    errors = [r for r in logs if r["log_level"] == "error"]
    assert [(e["event"], e["part"]) for e in errors] == [("metrics.unavailable", "metrics")]
    assert "no vLLM replica answered" in errors[0]["error"]
    assert metric(daemon, "vllm_autoscaler_errors_total", kind="metrics") == 1
    assert metric(daemon, "vllm_autoscaler_metrics_age_seconds", target="tiny") > 0


async def test_an_unreadable_pool_skips_the_whole_target(make_daemon, replica, kube, world):
    daemon = make_daemon(NO_ELECTION)
    await daemon.tick()
    kube.inject(403, method="GET", path=f"/deployments/{DEPLOYMENT}$", times=None)
    replica.text = busy_page(finished=20)
    writes = len(world.received(UPDATES))
    with structlog.testing.capture_logs() as logs:
        outcome = (await daemon.tick())["tiny"]
    assert outcome.decision is None
    assert len(world.received(UPDATES)) == writes  # Modal is not scaled on half a view either
    [error] = [r for r in logs if r["log_level"] == "error"]
    assert "missing permission: verb 'get' on resource 'deployments'" in error["error"]
    assert metric(daemon, "vllm_autoscaler_errors_total", kind="actuator") == 1


async def test_a_failed_actuation_is_logged_and_the_other_pool_still_scales(make_daemon, replica,
                                                                           kube, world):
    daemon = make_daemon(NO_ELECTION)
    kube.inject(403, method="PUT", path=SCALE, times=None)
    with structlog.testing.capture_logs() as logs:
        outcome = await quiet_then_busy(daemon, replica)
    assert outcome.applied["kubernetes"].startswith("failed: ")
    assert replicas(kube) == 1
    assert world.function(APP, FUNCTION).overrides.min_containers == \
        outcome.decision.modal_min_containers > 0
    assert [r["event"] for r in logs if r["log_level"] == "error"] == ["actuation.failed"]


async def test_a_dry_run_writes_nothing_not_even_the_lease(make_daemon, replica, kube, world):
    daemon = make_daemon(dry_run=True)
    outcome = await quiet_then_busy(daemon, replica)
    assert outcome.decision.kubernetes_replicas > 1
    assert outcome.applied["kubernetes"].startswith("dry run: would scale 1 -> ")
    assert outcome.applied["modal"].startswith("dry run: would set")
    assert replicas(kube) == 1 and world.received(UPDATES) == []
    assert [r for r in kube.requests if r.method != "GET"] == []


async def test_a_restart_recalls_what_prometheus_kept(make_daemon, tmp_path):
    # Three hours at 2 req/s; the first tokens came after 5 s from 40 to 20 minutes ago
    # (the SLO is 3 s), within 0.5 s since.
    end = int(time.time())
    (tmp_path / "prometheus").mkdir()
    prometheus = PrometheusServer(None, tmp_path / "prometheus")
    prometheus.backfill(vllm_history(end, 3 * 3600, lambda before: 2.0, {"model_name": "tiny-llama"},
                                     slow=((20 * 60, 40 * 60),)))
    prometheus.start()
    try:
        daemon = make_daemon("metrics.source=prometheus", f"metrics.prometheus.url={prometheus.url}",
                             "tick_seconds=15", dry_run=True)
        with structlog.testing.capture_logs() as logs:
            first, second = (await daemon.tick())["tiny"], (await daemon.tick())["tiny"]
    finally:
        prometheus.stop()
    (recalled,) = [r for r in logs if r["event"] == "history.recalled"]  # once, before deciding
    assert recalled["observations"] >= 3 * 3600 / 15 - 2 and recalled["seconds"] >= 3 * 3600 - 30
    assert first.decision.reason.details["late_share"] < 0.01  # nothing is late now
    # A third of the last hour's requests were late, read from the TTFT histogram: 33 times
    # the 1% allowed.
    assert first.decision.reason.details["error_budget_burn"] == pytest.approx(100 / 3, rel=0.1)
    assert first.decision.reason.details["k8s_forecast"] == pytest.approx(2.0, rel=0.02)
    assert second.decision is not None


async def running(daemon) -> asyncio.Task:
    task = asyncio.create_task(daemon.run())
    await eventually(lambda: daemon._runner is not None or task.done(), what="HTTP port")
    return task


async def stopped(daemon, task: asyncio.Task) -> float:
    """Stop the daemon; how long it took to return (it must return 0)."""
    started = time.monotonic()
    daemon.stop()
    assert await asyncio.wait_for(task, 10) == 0
    return time.monotonic() - started


async def test_the_standby_observes_and_takes_over_when_the_leader_stops(make_daemon, replica,
                                                                        kube, world):
    a, b = make_daemon(identity="pod-a"), make_daemon(identity="pod-b")
    task_a = await running(a)
    await eventually(lambda: a.is_leader, what="pod-a to lead")
    task_b = await running(b)
    replica.text = busy_page(finished=50)
    await eventually(lambda: replicas(kube) > 1, what="the leader to scale up")
    await asyncio.sleep(1)
    assert not b.is_leader and metric(b, "vllm_autoscaler_leader") == 0
    assert metric(b, "vllm_autoscaler_actuations_total", target="tiny", pool="kubernetes") == 0
    assert metric(b, "vllm_autoscaler_desired_capacity", target="tiny", pool="kubernetes") > 1

    await stopped(a, task_a)  # releases the Lease: no need to wait for it to expire
    released = time.monotonic()
    await eventually(lambda: b.is_leader, timeout_s=10, what="pod-b to take over")
    assert time.monotonic() - released < 3  # the lease duration
    world.redeploy(APP)  # wipes Modal's overrides: only an acting leader puts them back
    await eventually(lambda: world.function(APP, FUNCTION).overrides.scaledown_window == 30,
                     what="pod-b to reconcile Modal")
    await eventually(lambda: metric(b, "vllm_autoscaler_actuations_total", target="tiny",
                                    pool="modal") == 1, what="pod-b to count its actuation")
    assert metric(b, "vllm_autoscaler_leader") == 1
    assert await stopped(b, task_b) < 5
    assert kube.get("leases", "vllm-autoscaler")["spec"].get("holderIdentity") is None


async def test_http_endpoints_report_and_change_nothing(make_daemon, replica, kube):
    kube.inject(403, method="GET", path=f"/deployments/{DEPLOYMENT}$", times=None)
    daemon = make_daemon(NO_ELECTION)
    task = await running(daemon)
    base = f"http://127.0.0.1:{daemon.port}"
    async with aiohttp.ClientSession() as http:
        await asyncio.sleep(1.2)
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 503
            assert "'tiny': ['kubernetes']" in await response.text()
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        kube.faults.clear()

        async def ready() -> bool:
            async with http.get(f"{base}/readyz") as response:
                return response.status == 200
        await eventually(ready, what="/readyz")
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
        families = {f.name for f in text_string_to_metric_families(text)}
        assert {"vllm_autoscaler_desired_capacity", "vllm_autoscaler_current_capacity",
                "vllm_autoscaler_tick_duration_seconds", "vllm_autoscaler_errors",
                "vllm_autoscaler_metrics_age_seconds", "vllm_autoscaler_leader",
                "vllm_autoscaler_decision_info"} <= families
        for method in ("POST", "PUT", "DELETE"):
            async with http.request(method, f"{base}/metrics") as response:
                assert response.status == 405
    await stopped(daemon, task)


async def test_an_invalid_config_is_rejected_and_the_running_one_stays(make_daemon, tmp_path):
    daemon = make_daemon(NO_ELECTION)
    task = await running(daemon)
    path = tmp_path / "config.yaml"
    good = path.read_text()
    with structlog.testing.capture_logs() as logs:
        path.write_text(good.replace("max_replicas: 10", "max_replicas: -3"))
        await eventually(lambda: metric(daemon, "vllm_autoscaler_errors_total",
                                        kind="config") == 1, what="the file change")
    [rejected] = [r for r in logs if r["event"] == "config.rejected"]
    assert "targets.0.kubernetes.max_replicas" in rejected["error"] and "-3" in rejected["error"]
    assert daemon.config.targets[0].kubernetes.max_replicas == 10
    await stopped(daemon, task)


async def test_a_reload_keeps_the_state_of_unchanged_targets(make_daemon, tmp_path):
    daemon = make_daemon(NO_ELECTION)
    task = await running(daemon)
    [before] = daemon._targets
    path = tmp_path / "config.yaml"
    path.write_text(path.read_text() + "log_level: debug\n")
    daemon.request_reload()  # as SIGHUP does
    await eventually(lambda: daemon.config.log_level == "debug", what="the reload")
    assert daemon._targets == [before]  # same policy object: its state goes on
    path.write_text(path.read_text().replace("max_replicas: 10", "max_replicas: 3"))
    daemon.request_reload()
    await eventually(lambda: daemon.config.targets[0].kubernetes.max_replicas == 3,
                     what="the second reload")
    assert daemon._targets[0] is not before
    await stopped(daemon, task)


async def test_a_stop_lets_a_started_actuation_finish(make_daemon, world):
    world.slow_down(1.0, rpc=UPDATES, times=1)  # the first Modal write takes a second
    daemon = make_daemon(NO_ELECTION)
    task = await running(daemon)
    await eventually(lambda: world.received(UPDATES), what="the first Modal write")
    assert await stopped(daemon, task) < 5
    assert world.function(APP, FUNCTION).overrides.scaledown_window == 30  # not cut off


async def test_a_stop_abandons_a_tick_still_observing(make_daemon, kube):
    daemon = make_daemon(NO_ELECTION)
    kube.inject(None, method="GET", path=f"/deployments/{DEPLOYMENT}$", delay=4.0)
    task = await running(daemon)
    await eventually(lambda: kube.recorded("GET", "/apis$") or kube.faults[0].times == 0,
                     what="the slow read")
    assert await stopped(daemon, task) < 1.5
    assert [r for r in kube.requests if r.method != "GET"] == []


async def test_an_overrun_is_logged_and_the_missed_ticks_are_skipped(make_daemon, kube):
    daemon = make_daemon(NO_ELECTION)  # ticks of 0.5 s
    kube.inject(None, method="GET", path=f"/deployments/{DEPLOYMENT}$", delay=1.6)
    with structlog.testing.capture_logs() as logs:
        task = await running(daemon)
        await asyncio.sleep(3.0)
        await stopped(daemon, task)
    [overrun] = [r for r in logs if r["event"] == "tick.overrun"]
    assert overrun["duration_s"] >= 1.6
    assert metric(daemon, "vllm_autoscaler_tick_overruns_total") == 1
    # 3 s of 0.5 s ticks with 1.6 s lost: ~3 more ticks (fewer on a busy machine), never a
    # catch-up burst of the missed ones.
    ticks = len([r for r in logs if r["event"] == "decision"])
    assert 2 <= ticks <= 5


@pytest.mark.parametrize("override, message", [
    ("metrics.source=simulated", "exists in the simulator only"),
    ("targets.0.profile=no-such-profile", "unknown replica profile 'no-such-profile'"),
])
async def test_what_cannot_run_is_refused_at_start(make_daemon, override, message):
    from vllm_autoscaler.controller.daemon import StartupError

    with pytest.raises(StartupError, match=message):
        make_daemon(override)
