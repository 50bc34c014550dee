"""The world the fault matrix runs the real daemon in: the Kubernetes API emulator, the local
Modal control plane, vLLM replicas whose /metrics follow a load the test sets (read directly or
through a real Prometheus), and a record of every tick the daemon's own loop runs."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulators.vllm_exporter import Exporter
from fixtures.realparts import PrometheusServer
from prometheus_client.parser import text_string_to_metric_families
from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.controller.daemon import Daemon
from vllm_autoscaler.controller.types import Decision, Observation

PROFILE = Path(__file__).parents[1] / "daemon" / "data" / "cpu-tiny-llama.yaml"
APP, FUNCTION, DEPLOYMENT, TARGET = "vllm-inference", "serve", "vllm-tiny", "tiny"
TICK_S = 0.3
LEASE = {"lease_name": "vllm-autoscaler", "lease_duration_seconds": 3,
         "renew_deadline_seconds": 1.5, "retry_period_seconds": 0.5}
UPDATES = "FunctionUpdateSchedulingParams"
SCALE = f"/deployments/{DEPLOYMENT}/scale$"

# vLLM's series, current names and the names of older releases (what the sources detect).
NAMES = {"running": "vllm:num_requests_running", "waiting": "vllm:num_requests_waiting",
         "kv": "vllm:kv_cache_usage_perc", "finished": "vllm:request_success_total",
         "prompt": "vllm:prompt_tokens_total", "output": "vllm:generation_tokens_total"}
OLD_NAMES = {**NAMES, "kv": "vllm:gpu_cache_usage_perc"}


class Load:
    """What the replicas' /metrics report: requests finishing at `rate` per second (counters
    grow continuously), `running` and `waiting` gauges; `names` spells the series; `raw`
    replaces a series' value by any text (NaN, -3, 1e12); `empty` serves no vLLM series."""

    def __init__(self, rate: float = 1.0, running: float = 4, waiting: float = 0):
        self.rate, self.running, self.waiting = rate, running, waiting
        self.names = dict(NAMES)
        self.raw: dict[str, str] = {}
        self.empty = False
        self._finished, self._since = 1000.0, time.monotonic()

    def set(self, **values: float) -> None:
        """Change the load; counters go on from where they are."""
        self._finished, self._since = self.finished(), time.monotonic()
        for name, value in values.items():
            setattr(self, name, value)

    def up(self) -> None:
        """More than the pools carry: the controller wants to scale up."""
        self.set(rate=6.0, running=8, waiting=24)

    def finished(self) -> float:
        return self._finished + self.rate * (time.monotonic() - self._since)

    def page(self) -> str:
        if self.empty:
            return "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.0\n"
        done = self.finished()
        values = {"running": self.running, "waiting": self.waiting,
                  "kv": 0.9 if self.waiting else 0.4, "finished": done,
                  "prompt": 200 * done, "output": 100 * done}
        lines = []
        for signal, value in values.items():
            name = self.names[signal]
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# TYPE {name.removesuffix('_total')} {kind}",
                      f'{name}{{model_name="tiny-llama"}} {self.raw.get(signal, repr(float(value)))}']
        return "\n".join(lines) + "\n"


class ThreadedExporter:
    """A /metrics server for Prometheus to scrape, in a thread (it outlives a test's loop)."""

    def __init__(self, load: Load):
        self.load = load

        class Handler(BaseHTTPRequestHandler):
            def do_GET(handler) -> None:
                body = load.page().encode()
                handler.send_response(200)
                handler.send_header("Content-Type", "text/plain; version=0.0.4")
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FastPrometheus(PrometheusServer):
    """Prometheus scraping every second (the stand-in replicas answer at once)."""

    RATE_WINDOW = "4s"

    def __init__(self, scrape: str, workdir: Path):
        super().__init__(scrape, workdir)
        config = workdir / "prometheus.yml"
        settings = json.loads(config.read_text())
        settings["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s"}
        config.write_text(json.dumps(settings))

    def has(self, promql: str) -> bool:
        """Whether the query answers with a number (NaN is not one)."""
        values = [float(r["value"][1]) for r in self.query(promql)]
        return bool(values) and not any(math.isnan(v) for v in values)


@dataclass
class Tick:
    """One tick of the daemon's loop as the world saw it."""

    started: float  # time.monotonic()
    logs_from: int  # index in the captured logs
    ended: float = 0.0
    logs_to: int = 0
    observation: Observation | None = None
    decision: Decision | None = None
    applied: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    tmp_path: Path
    kube: Any
    plane: Any
    logs: list[dict]
    load: Load
    metrics: dict  # the config's `metrics` section
    replicas: list[Exporter] = field(default_factory=list)
    prometheus: FastPrometheus | None = None
    daemon: Daemon | None = None
    task: asyncio.Task | None = None
    ticks: list[Tick] = field(default_factory=list)
    made: list[Daemon] = field(default_factory=list)
    before: tuple[int | None, int | None] = (None, None)  # capacity when the fault came
    token: tuple[str, str] | None = None  # Modal's token while a case changes it
    patches: pytest.MonkeyPatch = field(default_factory=pytest.MonkeyPatch)

    @property
    def config_path(self) -> Path:
        return self.tmp_path / "config.yaml"

    def config(self, **kubernetes: Any) -> dict:
        return {
            "tick_seconds": TICK_S,
            "targets": [{
                "name": TARGET, "model": "tiny-llama", "profile": str(PROFILE),
                "selector": {"model_name": "tiny-llama"},
                "kubernetes": {"deployment": DEPLOYMENT, "min_replicas": 1, "max_replicas": 50,
                               "max_writes_per_minute": 1000, **kubernetes},
                "modal": {"app": APP, "function": FUNCTION, "max_containers": 50,
                          "scaledown_window_seconds": 30},
                # No stabilisation: a blind scale-down would show at once.
                "policy": {"controller": {"base_load_window_seconds": 0.25, "hysteresis": 0,
                                          "scale_down_stabilization_seconds": 0}},
            }],
            "metrics": self.metrics,
            "leader_election": LEASE,
        }

    def write_config(self, **kubernetes: Any) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(**kubernetes)))

    # --- the daemon's life

    async def start(self, warm: bool = True) -> None:
        """A daemon running its own loop (`warm`: with 2 clean ticks behind it)."""
        if not self.config_path.exists():
            self.write_config()
        daemon = Daemon(load_config(self.config_path), config_path=self.config_path,
                        kubeconfig=str(self.kube.kubeconfig), host="127.0.0.1", port=0,
                        identity=f"pod-{len(self.made)}")
        self.made.append(daemon)
        self._record_ticks(daemon)
        started = time.monotonic()
        self.daemon, self.task = daemon, asyncio.create_task(daemon.run())
        if warm:
            await self.until(lambda: len(self.clean_ticks(after=started)) >= 2, 20,
                             "two clean ticks")

    def _record_ticks(self, daemon: Daemon) -> None:
        original = daemon.tick

        async def tick() -> dict:
            record = Tick(time.monotonic(), len(self.logs))
            try:
                outcome = (await original())[TARGET]
                record.observation, record.decision = outcome.observation, outcome.decision
                record.applied = outcome.applied
                return {TARGET: outcome}
            finally:
                record.ended, record.logs_to = time.monotonic(), len(self.logs)
                self.ticks.append(record)

        daemon.tick = tick  # the loop calls self.tick(): every tick goes through here

    async def stop(self) -> int | None:
        if self.task is None:
            return None
        if not self.task.done():
            self.daemon.stop()
        code = await asyncio.wait_for(self.task, 15)
        self.task = None
        return code

    async def close(self) -> None:
        self.patches.undo()
        await self.stop()
        for daemon in self.made:
            await daemon.aclose()

    # --- observing it

    def errors(self, start: int, end: int | None = None) -> list[dict]:
        return [r for r in self.logs[start:end] if r.get("log_level") == "error"]

    def clean(self, tick: Tick) -> bool:
        """Decided, applied everything it asked, logged no error."""
        return tick.decision is not None and not self.errors(tick.logs_from, tick.logs_to) \
            and all(not a.startswith(("failed", "not applied", "standby"))
                    for a in tick.applied.values())

    def clean_ticks(self, after: float) -> list[Tick]:
        return [t for t in self.ticks if t.started > after and self.clean(t)]

    def ticks_since(self, since: float) -> list[Tick]:
        return [t for t in self.ticks if t.started > since]

    async def ticks_after(self, since: float, count: int, timeout_s: float = 30) -> list[Tick]:
        """Wait for `count` ticks started after `since` to end (fewer if the loop ends)."""
        await self.until(lambda: len(self.ticks_since(since)) >= count or self.task is None
                         or self.task.done(), timeout_s, f"{count} ticks")
        return self.ticks_since(since)[:count]

    def metric(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.daemon.telemetry.render().decode()):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return sample.value
        return 0.0

    def errors_total(self, kind: str) -> float:
        return self.metric("vllm_autoscaler_errors_total", kind=kind)

    def capacity(self) -> tuple[int | None, int | None]:
        """Kubernetes replicas and Modal min containers as set (None: the object is gone)."""
        try:
            replicas = self.kube.get("deployments", DEPLOYMENT)["spec"]["replicas"]
        except Exception:  # noqa: BLE001 - deleted by the fault
            replicas = None
        try:
            warm = self.plane.function(APP, FUNCTION).settings.min_containers
        except KeyError:
            warm = None
        return replicas, warm

    def scale_writes(self) -> list[tuple[float, int]]:
        """Successful writes of the Deployment's replicas: (arrival, replicas)."""
        return [(r.at, r.body["spec"]["replicas"]) for r in self.kube.recorded("PUT", SCALE)
                if r.status == 200]

    def modal_writes(self) -> list[tuple[float, int]]:
        """Every warm-pool update Modal received: (arrival, min_containers)."""
        return [(r.at, r.request.settings.min_containers) for r in self.plane.received(UPDATES)
                if r.request.settings.HasField("min_containers")]

    @staticmethod
    async def until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            await asyncio.sleep(0.05)
