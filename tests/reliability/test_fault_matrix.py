"""The fault matrix: each fault injected into a running controller (the real Daemon and its
loop) and cleared again, with one shared check of how the controller behaved.

For every case, while the fault lasts (and the load rises, so there is something to do): the
loop keeps ticking; no write scales a pool below where it was; no write is made twice; every
error logged is the one the case names, naming the fault, at most one per tick; the errors
are counted on /metrics by kind; no secret reaches the logs. Once the fault is cleared, the
next tick is clean again (decided, applied, no error). Each case adds a row to
docs/fault-matrix.md (conftest.py writes it when every case has run).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from emulators.kube_store import find_type
from emulators.modal_control_plane import VALID_TOKEN_SECRET
from fault_world import (
    APP,
    DEPLOYMENT,
    FUNCTION,
    LEASE,
    NAMES,
    OLD_NAMES,
    SCALE,
    TICK_S,
    UPDATES,
    Tick,
    World,
)
from grpclib import Status

Step = Callable[[World], Awaitable[None]]


@dataclass(frozen=True)
class Case:
    name: str  # the fault, as the table shows it
    inject: Step
    clear: Step
    did: str  # what the controller does about it (the checks below hold it to that)
    error: str | None = None  # the event of the error it logs (None: it copes without one)
    names: str = ""  # what that error's text says: it names the fault
    kind: str | None = None  # the errors_total kind it counts under
    source: str = "direct"  # the metric source: "direct" (two replicas) or "prometheus"
    fault_ticks: int = 2  # ticks run under the fault
    stops: bool = False  # the fault ends the process (the case checks how)
    recovery_ticks: int = 1  # ticks after the fault cleared until a clean one, at most
    check: Callable[[World, list[Tick]], None] | None = None  # what else the case asserts
    id: str = field(default="", compare=False)


async def nothing(world: World) -> None:
    pass


def sync(action: Callable[[World], object]) -> Step:
    async def step(world: World) -> None:
        action(world)
    return step


# --- Prometheus -------------------------------------------------------------------------

def prometheus_has(promql: str) -> Step:
    """Wait until Prometheus answers `promql` with a number (it scrapes every second)."""
    async def step(world: World) -> None:
        await world.until(lambda: world.prometheus.has(promql), 20, f"Prometheus: {promql}")
    return step


RATE = "rate(vllm:request_success_total[4s])"
HEALTHY = prometheus_has(  # every series sane again (irate: the last two samples too)
    f"{RATE} > 0 and on() (irate(vllm:request_success_total[4s]) >= 0) and on() "
    "(sum(vllm:num_requests_running) >= 0) and on() "
    "((sum(vllm:num_requests_waiting) >= 0) < 1e9) and on() (max(vllm:kv_cache_usage_perc) <= 1)")


def serve(**changes: object) -> Callable[[World], None]:
    """Change what the replicas report (names, raw values, no vLLM series at all)."""
    def action(world: World) -> None:
        for name, value in changes.items():
            setattr(world.load, name, value)
    return action


def then(*steps: Step) -> Step:
    async def step(world: World) -> None:
        for each in steps:
            await each(world)
    return step


async def prometheus_down(world: World) -> None:
    await asyncio.to_thread(world.prometheus.stop)


async def prometheus_up(world: World) -> None:
    await asyncio.to_thread(world.prometheus.start)
    await HEALTHY(world)


def prometheus_signal(sig: signal.Signals) -> Step:
    async def step(world: World) -> None:
        os.kill(world.prometheus.process.pid, sig)
    return step


# --- Kubernetes -------------------------------------------------------------------------

def kube_fault(status: int | None, method: str, path: str, times: int | None = None,
               **kwargs: object) -> Step:
    async def step(world: World) -> None:
        world.kube.inject(status, method=method, path=path, times=times, **kwargs)
    return step


async def kube_clear(world: World) -> None:
    world.kube.faults.clear()


def faults_used(world: World, ticks: list[Tick]) -> None:
    assert all(f.times == 0 for f in world.kube.faults), \
        ("the fault was never hit", [(t.decision, t.applied) for t in ticks])


def retried_after(seconds: float) -> Callable[[World, list[Tick]], None]:
    def check(world: World, ticks: list[Tick]) -> None:
        faults_used(world, ticks)
        puts = world.kube.recorded("PUT", SCALE)
        throttled = next(i for i, r in enumerate(puts) if r.status == 429)
        assert puts[throttled + 1].status == 200
        assert puts[throttled + 1].at - puts[throttled].at >= seconds  # Retry-After honoured
    return check


def delete(resource: str, name: str) -> Callable[[World], None]:
    return lambda world: world.kube.store.delete(find_type(resource), "default", name)


async def rename_deployment(world: World) -> None:
    replicas = world.kube.get("deployments", DEPLOYMENT)["spec"]["replicas"]
    delete("deployments", DEPLOYMENT)(world)
    world.kube.add_deployment(f"{DEPLOYMENT}-v2", replicas=replicas)


async def recreate_deployment(world: World) -> None:
    world.kube.add_deployment(DEPLOYMENT, replicas=world.before[0])


async def follow_rename(world: World) -> None:
    """The operator names the new Deployment in the config; the daemon reloads it."""
    world.write_config(deployment=f"{DEPLOYMENT}-v2")
    await world.until(lambda: world.daemon.config.targets[0].kubernetes.deployment ==
                      f"{DEPLOYMENT}-v2", 10, "the reload")


async def lose_lease_mid_tick(world: World) -> None:
    """Lease renewals start failing; a replica answers slowly, so the renew deadline passes
    while the next tick observes, before it would actuate."""
    world.kube.inject(500, method="PUT", path="/leases/", times=None)
    await world.until(lambda: any(r["event"] == "lease.failed" for r in world.logs), 5,
                      "a failed renewal")
    world.replicas[0].delay = LEASE["renew_deadline_seconds"] + 0.3
    world.load.set(rate=10.0, waiting=40)  # more again: that tick wants to scale up


def no_write_without_the_lease(world: World, ticks: list[Tick]) -> None:
    slow = next(t for t in ticks if t.ended - t.started > LEASE["renew_deadline_seconds"])
    assert slow.decision.kubernetes_replicas > world.capacity()[0]  # it wanted to scale up...
    assert all(a.startswith(("standby", "not applied")) for a in slow.applied.values())
    assert not [at for at, _ in world.scale_writes() if at > slow.started]  # ...and did not


async def regain_lease(world: World) -> None:
    world.kube.faults.clear()
    world.replicas[0].delay = 0
    await world.until(lambda: world.daemon.is_leader, 10, "leadership")


# --- Modal ------------------------------------------------------------------------------

def modal(action: str, *args: object, **kwargs: object) -> Step:
    async def step(world: World) -> None:
        getattr(world.plane, action)(*args, **kwargs)
    return step


def set_token(token: tuple[str, str] | None) -> Step:
    async def step(world: World) -> None:
        if token is None:
            world.plane.token = world.token
        else:
            world.token, world.plane.token = world.plane.token, token
    return step


redeploy = modal("deploy", APP, FUNCTION, scaledown_window=60)


# --- the controller's own process -------------------------------------------------------

async def sigterm_mid_actuation(world: World) -> None:
    """SIGTERM (the real signal, to this process) while a Modal write is under way."""
    world.plane.slow_down(1.0, rpc=UPDATES, times=1)
    sent = len(world.plane.received(UPDATES))
    await world.until(lambda: len(world.plane.received(UPDATES)) > sent, 10, "a Modal write")
    asked = world.plane.received(UPDATES)[-1].request.settings.min_containers
    signalled = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await world.stop() == 0
    assert time.monotonic() - signalled < 5
    assert world.plane.function(APP, FUNCTION).overrides.min_containers == asked  # not cut
    assert world.kube.get("leases", LEASE["lease_name"])["spec"].get("holderIdentity") is None


async def restart(world: World) -> None:
    """A new process; the fault is over once it leads and says it is ready."""
    await world.start(warm=False)
    await world.until(lambda: world.daemon.is_leader, 10, "the new process to lead")
    async with aiohttp.ClientSession() as http:
        async def ready() -> bool:
            async with http.get(f"http://127.0.0.1:{world.daemon.port}/readyz") as response:
                return response.status == 200
        deadline = time.monotonic() + 10
        while not await ready():
            assert time.monotonic() < deadline, "the new process never got ready"
            await asyncio.sleep(0.05)


def jump_wall_clock(seconds: float) -> Step:
    """The wall clock steps (NTP, an operator): time.time() moves, the monotonic clock not."""
    async def step(world: World) -> None:
        wall = time.time
        world.patches.setattr(time, "time", lambda: wall() + seconds)
    return step


async def unpatch(world: World) -> None:
    world.patches.undo()


def kept_pace_and_scaled(world: World, ticks: list[Tick]) -> None:
    """Ticks went on at their pace and the controller followed the load."""
    starts = [t.started for t in ticks]
    assert all(0.5 * TICK_S < b - a < 5 for a, b in itertools.pairwise(starts)), \
        starts
    assert any(t.applied.get("kubernetes", "").startswith("scaled") for t in ticks), \
        [t.applied for t in ticks]


def write_garbage(world: World) -> None:
    world.config_path.write_text("targets: [{name: tiny, kubernetes: {\n\t- :")


async def config_rejected(world: World) -> None:
    count = world.errors_total("config")
    await world.until(lambda: world.errors_total("config") > count, 10, "the rejection")
    world.load.set(rate=10.0, waiting=40)  # more again: scaled on the running config


async def good_config_back(world: World) -> None:
    reloads = sum(r["event"] == "config.reloaded" for r in world.logs)
    world.write_config()
    await world.until(lambda: sum(r["event"] == "config.reloaded" for r in world.logs) > reloads,
                      10, "the reload")


def scaled_on_the_running_config(world: World, ticks: list[Tick]) -> None:
    assert world.daemon.config.targets[0].kubernetes.max_replicas == 50
    assert any(t.applied.get("kubernetes", "").startswith("scaled") for t in ticks)


CASES = [
    # Prometheus (a real one, scraping a stand-in replica every second)
    Case("Prometheus down", prometheus_down, prometheus_up,
         "skips the target: no decision, no write", "metrics.unavailable", "is unreachable",
         "metrics", "prometheus"),
    Case("Prometheus slow (query timeout)", prometheus_signal(signal.SIGSTOP),
         then(prometheus_signal(signal.SIGCONT), HEALTHY),
         "skips the target after the 1 s query timeout", "metrics.unavailable",
         "Read timed out", "metrics", "prometheus"),
    Case("Prometheus answers empty results (no vLLM series)",
         then(sync(serve(empty=True)),
              prometheus_has("absent(vllm:num_requests_running)")),
         then(sync(serve(empty=False)), HEALTHY),
         "holds its last decision (no scale-down)", "metrics.degraded",
         "no vLLM series under the selector", "metrics", "prometheus"),
    Case("NaN values", then(sync(serve(raw={"running": "NaN", "finished": "NaN"})),
                            prometheus_has("(sum(vllm:num_requests_running) != bool "
                                           "sum(vllm:num_requests_running)) == 1")),
         then(sync(serve(raw={})), HEALTHY),
         "reads them as missing; holds, no scale-down", "metrics.degraded", "not a number",
         "metrics", "prometheus"),
    Case("negative values", then(sync(serve(raw={"running": "-1", "waiting": "-3"})),
                                 prometheus_has("sum(vllm:num_requests_waiting) < 0")),
         then(sync(serve(raw={})), HEALTHY),
         "reads them as missing; decides on the rest, no scale-down", "metrics.degraded",
         "negative", "metrics", "prometheus"),
    Case("absurd values (10¹² waiting, KV cache 250 %)",
         then(sync(serve(raw={"waiting": "1e12", "kv": "250"})),
              prometheus_has("sum(vllm:num_requests_waiting) > 1e9")),
         then(sync(serve(raw={})), HEALTHY),
         "reads them as missing; decides on the rest, no scale-down", "metrics.degraded",
         "above", "metrics", "prometheus"),
    # vLLM replicas scraped directly
    Case("vLLM series renamed between releases (kv_cache_usage_perc / gpu_cache_usage_perc)",
         sync(serve(names=OLD_NAMES)), sync(serve(names=NAMES)),
         "detects the other name and goes on deciding"),
    Case("vLLM series renamed to unknown names (a newer release)",
         sync(serve(names={**NAMES, "running": "vllm:num_requests_active",
                           "finished": "vllm:request_finished_total"})),
         sync(serve(names=NAMES)),
         "names the missing series; holds, no scale-down", "metrics.degraded",
         "renamed by this vLLM release", "metrics"),
    Case("one replica's /metrics unreachable",
         lambda world: world.replicas[1].stop(),
         lambda world: world.replicas[1].start(world.replicas[1].port),
         "decides on the replicas that answer, no scale-down", "metrics.degraded", "left out",
         "metrics"),
    # Kubernetes API
    Case("Kubernetes 409 Conflict on the scale write",
         kube_fault(409, "PUT", SCALE, times=1), kube_clear,
         "re-reads and writes again at once: one write", check=faults_used),
    Case("Kubernetes 429 with Retry-After: 1",
         kube_fault(429, "PUT", SCALE, times=1, headers={"Retry-After": "1"}), kube_clear,
         "waits the Retry-After, then writes: one write", check=retried_after(1.0)),
    Case("Kubernetes 500 on reads", kube_fault(500, "GET", f"/deployments/{DEPLOYMENT}$"),
         kube_clear, "retries within the tick, then skips the target", "actuator.unavailable",
         "HTTP 500", "actuator"),
    Case("Kubernetes 503 on the scale write", kube_fault(503, "PUT", SCALE), kube_clear,
         "retries within the tick, gives up; Modal still scaled", "actuation.failed",
         "HTTP 503", "actuator"),
    Case("Kubernetes API timeouts", kube_fault(None, "GET", f"/deployments/{DEPLOYMENT}$",
                                               delay=3.0), kube_clear,
         "gives up after its 2 s timeout, skips the target", "actuator.unavailable",
         "Read timed out", "actuator"),
    Case("Kubernetes 403 on the scale write", kube_fault(403, "PUT", SCALE), kube_clear,
         "names the missing permission; Modal still scaled", "actuation.failed",
         "missing permission: verb 'update' on resource 'deployments/scale'", "actuator"),
    Case("target Deployment deleted", sync(delete("deployments", DEPLOYMENT)),
         recreate_deployment, "skips the target (acting on half a view is acting blind)",
         "actuator.unavailable", f"Deployment '{DEPLOYMENT}' in namespace 'default' does not "
         "exist", "actuator"),
    Case("target Deployment renamed", rename_deployment, follow_rename,
         "skips the target until the config names the new Deployment", "actuator.unavailable",
         "does not exist", "actuator"),
    Case("an HPA scaling the same Deployment",
         sync(lambda world: world.kube.add_hpa("fighter", DEPLOYMENT)),
         sync(delete("horizontalpodautoscalers", "fighter")),
         "refuses to fight it: no Kubernetes write; Modal still scaled", "actuation.failed",
         "HorizontalPodAutoscaler 'fighter'", "actuator"),
    # Modal control plane
    Case("Modal RPC errors (UNAVAILABLE)", modal("fail", Status.UNAVAILABLE), modal("clear_faults"),
         "skips the target: no decision, no write", "actuator.unavailable",
         "could not read the warm pool", "actuator"),
    Case("Modal warm-pool update fails (INTERNAL)", modal("fail", Status.INTERNAL, rpc=UPDATES),
         modal("clear_faults"), "Kubernetes still scaled; Modal written next tick",
         "actuation.failed", "could not update the warm pool", "actuator"),
    Case("Modal RPC timeouts", modal("slow_down", 5.0), modal("clear_faults"),
         "gives up after 2 s, skips the target", "actuator.unavailable",
         "no answer within 2 s", "actuator"),
    Case("Modal app unknown (stopped)", modal("undeploy", APP), redeploy,
         "skips the target; looks the function up again next tick", "actuator.unavailable",
         "not found", "actuator"),
    Case("Modal token invalid", set_token(("ak-rotated", "as-rotated")), set_token(None),
         "skips the target; says which variables to check", "actuator.unavailable",
         "Modal rejected the token; check MODAL_TOKEN_ID and MODAL_TOKEN_SECRET", "actuator"),
    # The controller's own process
    Case("SIGTERM mid-tick (during a Modal write)", sigterm_mid_actuation, restart,
         "finishes the write, releases the Lease, exits 0 within 5 s", stops=True),
    Case("leader Lease lost mid-tick", lose_lease_mid_tick, regain_lease,
         "does not apply the tick's decision; standby until it holds the Lease again",
         "lease.failed", "HTTP 500", "lease", check=no_write_without_the_lease),
    Case("wall clock jumps 1 h forward", jump_wall_clock(3600), unpatch,
         "nothing changes: ticks and policy time are monotonic", fault_ticks=3,
         check=kept_pace_and_scaled),
    Case("wall clock jumps 1 h back", jump_wall_clock(-3600), unpatch,
         "nothing changes: ticks and policy time are monotonic", fault_ticks=3,
         check=kept_pace_and_scaled),
    Case("config file replaced by garbage", then(sync(write_garbage), config_rejected),
         good_config_back, "rejects it, keeps running on the last good config",
         "config.rejected", "not valid YAML", "config", check=scaled_on_the_running_config),
    Case("config file deleted", then(sync(lambda world: world.config_path.unlink()),
                                     config_rejected),
         good_config_back, "says so, keeps running on the last good config",
         "config.rejected", "cannot read config", "config", check=scaled_on_the_running_config),
]
def scales_down(tick: Tick) -> bool:
    """Whether the tick's decision asks a pool for less than it is set to."""
    decision, observation = tick.decision, tick.observation
    if decision is None:
        return False
    k8s, modal = observation.kubernetes, observation.modal
    warm = None if decision.modal_min_containers is None else \
        decision.modal_min_containers + (decision.modal_buffer_containers or 0)
    return (decision.kubernetes_replicas is not None and decision.kubernetes_replicas < k8s.desired
            ) or (warm is not None and warm < modal.desired)


CASES = [Case(**{**c.__dict__, "id": c.name.split(" (")[0].replace(" ", "-")}) for c in CASES]
SECRETS = (VALID_TOKEN_SECRET, "emulator-token")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_fault(case: Case, world: World, fault_table) -> None:
    fault_table.expected = [c.name for c in CASES]
    await world.start()
    world.before = world.capacity()
    counted = world.errors_total(case.kind) if case.kind else 0
    logs_from = len(world.logs)
    injected = time.monotonic()
    world.load.up()  # something to do: scale up
    await case.inject(world)
    window = await world.ticks_after(time.monotonic(), case.fault_ticks)  # under the fault
    if case.check:
        case.check(world, window)
    if not case.stops:
        assert not world.task.done(), "the controller stopped"
        assert len(window) == case.fault_ticks

    # No scale-down under the fault, no write twice.
    for tick in window:
        assert not scales_down(tick), (tick.decision, tick.observation)
    writes = world.scale_writes()
    assert all(a[1] != b[1] for a, b in itertools.pairwise(writes)), writes
    for tick in world.ticks:
        assert sum(tick.started <= at <= tick.ended for at, _ in writes) <= 1

    # One clear error per tick, counted by kind.
    errors = world.errors(logs_from)
    if case.error is None:
        assert not errors, errors
    else:
        assert errors, "no error logged"
        assert {e["event"] for e in errors} == {case.error}, errors
        assert all(case.names in json.dumps(e, ensure_ascii=False) for e in errors), errors
        attempts = (time.monotonic() - injected) / LEASE["retry_period_seconds"]
        assert len(errors) <= len(world.ticks_since(injected)) + 1 + (
            attempts if case.kind == "lease" else 0)
        assert world.errors_total(case.kind) - counted == len(errors)
    counted = world.errors_total(case.kind) - counted if case.kind else 0

    # Back to clean ticks once the fault is gone.
    cleared = time.monotonic()
    await case.clear(world)
    healthy = time.monotonic()
    await world.until(lambda: world.clean_ticks(after=healthy), 30, "a clean tick")
    after = world.ticks_since(healthy)
    recovered = next(i for i, t in enumerate(after, 1) if world.clean(t))
    assert recovered <= case.recovery_ticks, [(t.applied, world.errors(t.logs_from, t.logs_to))
                                              for t in after]
    assert not any(secret in json.dumps(world.logs, default=str) for secret in SECRETS)

    error = "none" if case.error is None else f"`{case.error}`: “…{case.names}…”"
    metric = f'`kind="{case.kind}"` +{counted:g}' if case.kind else "—"
    fault_table.add(case.name, case.did, error, metric, str(recovered),
                    f"{after[recovered - 1].ended - cleared:.1f} s")


async def test_without_a_fault_the_world_scales_down_at_once(world: World) -> None:
    """The control for the checks above: when the load goes, this config scales down on the
    next tick, so a tick that scaled down blind under a fault would be caught."""
    await world.start()
    world.load.up()
    await world.until(lambda: world.capacity()[0] > world.ticks[0].observation.kubernetes.desired,
                      10, "a scale-up")
    gone = time.monotonic()
    world.load.set(rate=0.1, running=0, waiting=0)
    await world.until(lambda: any(scales_down(t) for t in world.ticks_since(gone)), 10,
                      "a scale-down")
