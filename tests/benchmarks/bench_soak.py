"""Soak: the live daemon loop for 7 simulated days on an accelerated clock.

The real `Daemon` runs its own loop (leader election on) against the Kubernetes API emulator
and the local Modal control plane (in a child process, so that their request logs do not count
in this one's memory) and scrapes two stand-in vLLM replicas whose load follows a diurnal
curve in simulated time. The only change to the daemon is its clock: the waits between ticks
are skipped and counted as elapsed (`SkippingClock`), so a 15 s tick costs only its own work.

Prints the resident memory after a warm-up day and at the end (goal: < 10 MB growth) and the
tick time over the first and the last simulated hours (goal: stable).
Run: python tests/benchmarks/bench_soak.py [--days 7] [--tick-seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # for the emulators

from emulators.vllm_exporter import exporters
from prometheus_client.parser import text_string_to_metric_families
from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.controller.daemon import Clock, Daemon
from vllm_autoscaler.controller.logs import configure_logging

DAY_S = 86400.0
APP, FUNCTION, DEPLOYMENT = "vllm-inference", "serve", "vllm-tiny"
PROFILE = TESTS / "daemon" / "data" / "cpu-tiny-llama.yaml"


class SkippingClock(Clock):
    """Real time, except that waits return at once and count as elapsed."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.skipped

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        if not event.is_set():
            self.skipped += timeout
        await asyncio.sleep(0)  # let the rest of the loop (HTTP, elector) run


class DiurnalLoad:
    """One replica's /metrics: requests finishing at mean·(1 + 0.8·sin(2πt/day)) per second of
    the daemon's (simulated) time; counters are the exact integral."""

    def __init__(self, clock: Clock, mean: float = 2.0):
        self.clock, self.mean, self.start = clock, mean, clock.now()

    def page(self) -> str:
        t = self.clock.now() - self.start
        omega = 2 * math.pi / DAY_S
        rate = self.mean * (1 + 0.8 * math.sin(omega * t))
        done = self.mean * (t + 0.8 * (1 - math.cos(omega * t)) / omega)
        labels = '{model_name="tiny-llama"}'
        return "".join(f"{name}{labels} {value!r}\n" for name, value in (
            ("vllm:num_requests_running", float(min(rate * 2, 8))),
            ("vllm:num_requests_waiting", float(max(rate * 2 - 8, 0))),
            ("vllm:kv_cache_usage_perc", min(rate / 8, 1.0)),
            ("vllm:request_success_total", done),
            ("vllm:prompt_tokens_total", 200 * done),
            ("vllm:generation_tokens_total", 100 * done)))


def serve_emulators(conn, workdir: str) -> None:
    """Child process: both control planes, their request logs trimmed, until the pipe closes."""
    sys.path.insert(0, str(TESTS))
    from emulators.kube_api import running_kube_api
    from emulators.modal_control_plane import ModalControlPlane, serve_in_thread

    plane = ModalControlPlane()
    with running_kube_api() as kube, serve_in_thread(plane) as modal:
        kube.add_deployment(DEPLOYMENT, replicas=1)
        plane.deploy(APP, FUNCTION, scaledown_window=60)
        kubeconfig = kube.write_kubeconfig(Path(workdir) / "kubeconfig")
        conn.send((str(kubeconfig), modal.url, plane.token))
        while not conn.poll(5):
            kube.requests.clear()
            with plane._lock:
                plane._received.clear()
        conn.recv()


def rss_mb() -> float:
    gc.collect()
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb / 1024


async def soak(days: float, tick_s: float, workdir: Path, kubeconfig: str) -> dict:
    clock = SkippingClock()
    loads = [DiurnalLoad(clock), DiurnalLoad(clock)]
    ticks = int(days * DAY_S / tick_s) + 1
    durations = np.zeros(ticks + 10)  # allocated before the first reading: no growth from it
    async with exporters(*(load.page for load in loads)) as replicas:
        config = workdir / "config.yaml"
        config.write_text(yaml.safe_dump({
            "tick_seconds": tick_s,
            "targets": [{
                "name": "tiny", "model": "tiny-llama", "profile": str(PROFILE),
                "kubernetes": {"deployment": DEPLOYMENT, "min_replicas": 1, "max_replicas": 20,
                               "max_writes_per_minute": 1000},
                "modal": {"app": APP, "function": FUNCTION, "max_containers": 20},
            }],
            "metrics": {"source": "direct", "direct": {"targets": [r.url for r in replicas]}},
            "leader_election": {"lease_duration_seconds": 15, "renew_deadline_seconds": 10,
                                "retry_period_seconds": 2},
        }))
        daemon = Daemon(load_config(config), config_path=config, kubeconfig=kubeconfig,
                        host="127.0.0.1", port=0, identity="soak", clock=clock)
        figures: dict = {"ticks": 0}
        warm_up_s = min(DAY_S, days * DAY_S / 7)
        start = clock.now()
        original = daemon.tick

        async def tick() -> dict:
            began = time.perf_counter()
            outcomes = await original()
            durations[figures["ticks"]] = time.perf_counter() - began
            figures["ticks"] += 1
            elapsed = clock.now() - start
            if "rss_start" not in figures and elapsed >= warm_up_s:  # caches, histories full
                figures["rss_start"], figures["wall_start"] = rss_mb(), time.monotonic()
            if elapsed >= days * DAY_S or figures["ticks"] >= len(durations):
                daemon.stop()
            return outcomes

        daemon.tick = tick
        wall = time.monotonic()
        assert await daemon.run() == 0
        figures["rss_end"], figures["wall_s"] = rss_mb(), time.monotonic() - wall
        counters = {(s.name, tuple(sorted(s.labels.values()))): s.value for family in
                    text_string_to_metric_families(daemon.telemetry.render().decode())
                    for s in family.samples}
        figures["actuations"] = {pool: counters[("vllm_autoscaler_actuations_total",
                                                 tuple(sorted(("tiny", pool))))] for pool in ("kubernetes", "modal")}
        figures["errors"] = {kind: counters[("vllm_autoscaler_errors_total", (kind,))]
                             for kind in ("metrics", "actuator", "lease", "config", "internal")}
        figures["warm_up_h"] = warm_up_s / 3600
    hour = int(3600 / tick_s)
    figures["first_hour_ms"] = durations[:hour] * 1000
    figures["last_hour_ms"] = durations[figures["ticks"] - hour:figures["ticks"]] * 1000
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--tick-seconds", type=float, default=15)
    args = parser.parse_args()
    configure_logging("info", json=True)
    sys.stderr = open(os.devnull, "w") if not os.environ.get("SOAK_LOG") else sys.stderr  # noqa: SIM115
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as workdir:
        parent, child = context.Pipe()
        emulators = context.Process(target=serve_emulators, args=(child, workdir), daemon=True)
        emulators.start()
        kubeconfig, modal_url, (token_id, token_secret) = parent.recv()
        os.environ.update(MODAL_SERVER_URL=modal_url, MODAL_TOKEN_ID=token_id,
                          MODAL_TOKEN_SECRET=token_secret, MODAL_DISABLE_API_PROXY="1",
                          MODAL_CONFIG_PATH=os.path.join(workdir, "absent-modal.toml"))
        try:
            figures = asyncio.run(soak(args.days, args.tick_seconds, Path(workdir), kubeconfig))
        finally:
            parent.send("stop")
            emulators.join(timeout=20)
    first, last = figures["first_hour_ms"], figures["last_hour_ms"]
    growth = figures["rss_end"] - figures["rss_start"]
    print(f"soak: {args.days:g} simulated days, {figures['ticks']} ticks of {args.tick_seconds:g} s "
          f"in {figures['wall_s'] / 60:.1f} min of wall time")
    print(f"resident memory: {figures['rss_start']:.1f} MB after {figures['warm_up_h']:g} h, "
          f"{figures['rss_end']:.1f} MB at the end: {growth:+.1f} MB (goal < 10 MB)")
    print(f"tick time, first hour: median {np.median(first):.1f} ms, p99 "
          f"{np.percentile(first, 99):.1f} ms; last hour: median {np.median(last):.1f} ms, "
          f"p99 {np.percentile(last, 99):.1f} ms")
    print(f"actuations: {figures['actuations']}; errors: {figures['errors']}")


if __name__ == "__main__":
    main()
