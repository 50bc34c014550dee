"""`vllm-autoscaler run` end to end: two daemons as subprocesses against a real CPU vLLM server,
a real Prometheus scraping it, the Kubernetes API emulator and the local Modal control plane.

One scenario, in order (ticks of 1 s, windows shortened with --set):
1. both start; exactly one leads, the other observes and writes nothing;
2. a burst of requests: the leader scales up within two ticks of seeing it;
3. the load stops: Kubernetes scales down, but only after the stabilisation window;
4. a second burst, then Prometheus stops: the leader holds (no scale-down) and counts the
   errors; Prometheus comes back: decisions resume;
5. the leader is killed (SIGKILL, no release): the standby takes over once the Lease expires
   and actuates;
6. SIGTERM: the remaining daemon exits 0 within 5 s and releases the Lease.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from daemon_world import APP, DEPLOYMENT, FUNCTION, PROFILE
from fixtures.realparts import (
    MODEL_NAME,
    ManagedProcess,
    PrometheusServer,
    free_port,
    http_get,
    send_completions,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.realparts

CLI = Path(sys.executable).parent / "vllm-autoscaler"
STABILIZATION_S = 8
LEASE_S = 4
SETTINGS = [  # what the test shortens, as an operator would
    "tick_seconds=1",
    f"targets.0.policy.controller.scale_down_stabilization_seconds={STABILIZATION_S}",
    "targets.0.policy.controller.base_load_window_seconds=1",
    "targets.0.policy.controller.stale_after_seconds=5",
    # The test's bursts come a minute apart: no warm reserve for them, so the scale-down
    # shows the stabilisation window alone.
    "targets.0.policy.controller.burst_memory_seconds=0",
    "targets.0.kubernetes.max_writes_per_minute=60",  # a test rescales more often than 6/min
    f"leader_election.lease_duration_seconds={LEASE_S}",
    "leader_election.renew_deadline_seconds=3",
    "leader_election.retry_period_seconds=1",
]


class DaemonProcess(ManagedProcess):
    def __init__(self, name: str, config: Path, kubeconfig: Path, workdir: Path):
        self.port = free_port()
        overrides = [arg for setting in SETTINGS for arg in ("--set", setting)]
        super().__init__(name, [
            str(CLI), "run", "--config", str(config), *overrides, "--host", "127.0.0.1",
            "--port", str(self.port), "--kubeconfig", str(kubeconfig),
        ], workdir / f"{name}.log", env={"POD_NAME": name})

    def start(self) -> None:
        super().start()
        self.wait_until(lambda: self.metrics() != {}, 30, "/metrics")

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        if body is None:
            return {}
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(body.decode())
                for s in family.samples}

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    @property
    def leads(self) -> bool:
        return self.metric("vllm_autoscaler_leader") == 1

    def records(self, event: str = "decision") -> list[dict]:
        """Its JSON log lines of `event`, each with `at` (epoch seconds)."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # not one of ours (a library writing to stderr)
            if record.get("event") == event:
                record["at"] = datetime.fromisoformat(record["timestamp"]).timestamp()
                found.append(record)
        return found

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; its exit code and how long it took."""
        sent = time.monotonic()
        os.kill(self.process.pid, signal.SIGTERM)
        code = self.process.wait(timeout=10)
        took = time.monotonic() - sent
        self.stop()
        return code, took


def capacity(kube, plane) -> tuple[int, int]:
    """Kubernetes replicas and Modal warm containers (min + buffer) as set in the pools."""
    settings = plane.function(APP, FUNCTION).settings
    return (kube.get("deployments", DEPLOYMENT)["spec"]["replicas"],
            settings.min_containers + settings.buffer_containers)


async def until(check, timeout_s: float, what: str) -> float:
    """Poll `check` (sync) until true; the time it became true."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.2)
    return time.time()


async def settled(read, quiet_s: float, timeout_s: float, what: str) -> None:
    """Poll `read` until its value has not changed for `quiet_s`."""
    deadline = time.monotonic() + timeout_s
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.2)
        if (now := read()) != value:
            value, since = now, time.monotonic()


async def burst(vllm: str) -> float:
    """About 5 s of load, more than the server serves at once; when it ended."""
    await asyncio.gather(*(send_completions(vllm, 24, 96) for _ in range(3)))
    return time.time()


def wrote_scale_up(record: dict) -> bool:
    applied = record["applied"]
    return applied.get("kubernetes", "").startswith("scaled") or "min_containers" in applied.get(
        "modal", "")


@pytest.fixture
def prometheus_server(tmp_path, vllm_server) -> Iterator[PrometheusServer]:
    """A Prometheus of this test's own: the session's keeps other tests' load, which the
    daemons would recall at start (sizing the pools for it before the burst comes)."""
    (tmp_path / "prometheus").mkdir()
    prometheus = PrometheusServer(vllm_server, tmp_path / "prometheus")
    prometheus.start()
    yield prometheus
    prometheus.stop()


@pytest.fixture
def daemons(tmp_path, kube, modal_control_plane, vllm_server, prometheus_server):
    kube.add_deployment(DEPLOYMENT, replicas=1)
    modal_control_plane.plane.deploy(APP, FUNCTION, scaledown_window=60)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "targets": [{
            "name": "tiny", "model": MODEL_NAME, "profile": str(PROFILE),
            "selector": {"model_name": MODEL_NAME},
            "kubernetes": {"deployment": DEPLOYMENT, "min_replicas": 1, "max_replicas": 8,
                           "startup_seconds": {"low": 1, "mode": 2, "high": 3}},
            "modal": {"app": APP, "function": FUNCTION, "max_containers": 8,
                      "scaledown_window_seconds": 30,
                      "snapshot_start_seconds": {"low": 1, "mode": 2, "high": 3}},
        }],
        "metrics": {"source": "prometheus", "prometheus": {
            "url": prometheus_server.url, "rate_window": "5s", "timeout_seconds": 1}},
    }))
    started = [DaemonProcess(name, config, kube.kubeconfig, tmp_path)
               for name in ("daemon-a", "daemon-b")]
    for daemon in started:
        daemon.start()
    yield started
    for daemon in started:
        daemon.stop()


async def test_the_daemon_end_to_end(daemons, kube, modal_control_plane, vllm_server,
                                     prometheus_server: PrometheusServer):
    plane = modal_control_plane.plane
    # 1. One leader; the other observes.
    await until(lambda: sum(d.leads for d in daemons) == 1, 15, "one leader")
    leader, standby = sorted(daemons, key=lambda d: not d.leads)
    await until(lambda: len(standby.records()) >= 2, 10, "the standby to decide")
    assert not any(r["leader"] for r in standby.records())
    # The leader may size the pools at once from what Prometheus kept of earlier tests' load.
    await settled(lambda: capacity(kube, plane), 2.0, 20, "the start to settle")
    replicas_before, warm_before = capacity(kube, plane)

    # 2. A burst: scale-up within two ticks of the first tick that sees it.
    started = time.time()
    load_ended = await burst(vllm_server)

    def since_burst() -> list[dict]:
        return [r for r in leader.records() if r["at"] >= started]

    await until(lambda: any(wrote_scale_up(r) for r in since_burst()), 15, "a scale-up")
    replicas, warm = capacity(kube, plane)
    assert replicas > replicas_before or warm > warm_before
    records = since_burst()
    seen = next(i for i, r in enumerate(records)
                if (r["inputs"]["arrival_rate"] or 0) > 0 or (r["inputs"]["waiting"] or 0) > 0)
    scaled = next(i for i, r in enumerate(records) if wrote_scale_up(r))
    assert scaled - seen <= 1, records[seen:scaled + 1]
    await until(lambda: capacity(kube, plane)[0] > 1, 15, "Kubernetes to take the load")

    # 3. Load stopped: Kubernetes scales down from its peak (which it may reach in more than one
    # step), not before the stabilisation window. The base layer holds the rate's peak for
    # Modal's scaledown window (30 s here) before that window starts, and a loaded machine
    # stretches the 1-s ticks: up to a minute.
    peak = 0

    def below_peak() -> bool:
        nonlocal peak
        replicas = capacity(kube, plane)[0]
        peak = max(peak, replicas)
        return replicas < peak

    scaled_down = await until(below_peak, 75, "a scale-down")
    assert scaled_down - load_ended >= STABILIZATION_S
    assert standby.metric("vllm_autoscaler_actuations_total", target="tiny",
                          pool="kubernetes") == 0
    assert not any(r["leader"] for r in standby.records())

    # 4. Prometheus down after a burst: hold, no scale-down; back: decisions resume.
    await burst(vllm_server)
    await until(lambda: capacity(kube, plane)[0] > 1, 20, "the second scale-up")
    # The pods may still be growing (in steps, as above): what is held is what was reached.
    await settled(lambda: capacity(kube, plane), 2.0, 20, "the scale-up to settle")
    prometheus_server.stop()
    outage = time.time()
    held = capacity(kube, plane)
    await asyncio.sleep(STABILIZATION_S + 4)
    assert capacity(kube, plane) == held  # never scaled down blind
    assert leader.metric("vllm_autoscaler_errors_total", kind="metrics") >= STABILIZATION_S
    assert leader.metric("vllm_autoscaler_metrics_age_seconds", target="tiny") > STABILIZATION_S
    assert not [r for r in leader.records() if r["at"] > outage + 1.5]  # no decision: skipped
    assert any("is unreachable" in r["error"] for r in leader.records("metrics.unavailable"))
    prometheus_server.start()
    back = time.time()
    await until(lambda: any(r["at"] > back for r in leader.records()), 15, "decisions to resume")

    # 5. The leader dies without releasing the Lease: the standby takes over after it expires.
    leader.kill()
    killed = time.monotonic()
    await until(lambda: standby.leads, 15, "the standby to take over")
    assert time.monotonic() - killed >= LEASE_S - 1  # waited for the expiry
    plane.redeploy(APP)  # wipes the warm-pool overrides: an acting leader restores them
    await until(lambda: plane.function(APP, FUNCTION).overrides.scaledown_window == 30, 10,
                "the new leader to reconcile Modal")
    # The counter moves once the update call has returned, just after the server saw it.
    await until(lambda: standby.metric("vllm_autoscaler_actuations_total", target="tiny",
                                       pool="modal") >= 1, 5, "the new leader's Modal actuation")

    # 6. SIGTERM: exit 0 within 5 s, the Lease released.
    code, took = standby.terminate()
    assert code == 0 and took < 5, (code, took)
    assert kube.get("leases", "vllm-autoscaler")["spec"].get("holderIdentity") is None
