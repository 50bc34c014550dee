"""Fixtures of the fault matrix: its world (fault_world.py), a real Prometheus for the cases
that need one, and the table of results the suite writes to docs/fault-matrix.md."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from emulators.vllm_exporter import exporters
from fault_world import (
    APP,
    DEPLOYMENT,
    FUNCTION,
    TICK_S,
    FastPrometheus,
    Load,
    ThreadedExporter,
    World,
)

TABLE = Path(__file__).parents[2] / "docs" / "fault-matrix.md"


@pytest.fixture(scope="session")
def prometheus_load(tmp_path_factory) -> Iterator[tuple[Load, FastPrometheus]]:
    """A real Prometheus scraping one stand-in replica every second, and the load it reports."""
    load = Load()
    load.up()  # throughout: the metric faults come under a steady, high load
    exporter = ThreadedExporter(load)
    prometheus = FastPrometheus(exporter.url, tmp_path_factory.mktemp("prometheus"))
    try:
        prometheus.start()
        yield load, prometheus
    finally:
        prometheus.stop()
        exporter.close()


@pytest.fixture
async def world(request, tmp_path, kube, modal_control_plane) -> AsyncIterator[World]:
    """The world of one fault case (its `source`: direct scrape of two replicas, or
    Prometheus); the daemon is started by the test and stopped here."""
    kube.add_deployment(DEPLOYMENT, replicas=1)
    plane = modal_control_plane.plane
    plane.deploy(APP, FUNCTION, scaledown_window=60)
    case = getattr(request.node, "callspec", None) and request.node.callspec.params.get("case")
    with structlog.testing.capture_logs() as logs:
        if case and case.source == "prometheus":
            load, prometheus = request.getfixturevalue("prometheus_load")
            await World.until(lambda: prometheus.has(
                f"rate(vllm:request_success_total[{prometheus.RATE_WINDOW}]) > 5"),
                20, "Prometheus to see the load")
            metrics = {"source": "prometheus", "prometheus": {
                "url": prometheus.url, "rate_window": prometheus.RATE_WINDOW,
                "timeout_seconds": 1}}
            made = World(tmp_path, kube, plane, logs, load, metrics, prometheus=prometheus)
            try:
                yield made
            finally:  # the next case starts from a sane world, whatever this one left
                load.raw, load.empty = {}, False
                if prometheus.process is None:
                    prometheus.start()
                else:
                    os.kill(prometheus.process.pid, signal.SIGCONT)
                await made.close()
            return
        load = Load()
        async with exporters(load.page, load.page) as replicas:
            metrics = {"source": "direct", "direct": {
                "targets": [r.url for r in replicas], "timeout_seconds": 3}}
            made = World(tmp_path, kube, plane, logs, load, metrics, replicas=replicas)
            yield made
            await made.close()


class Table:
    """Rows of the fault matrix, written as Markdown once every case has one."""

    HEADER = ("| fault | what the controller did | error it logged | `errors_total` | "
              "ticks to recover | time to recover |\n|---|---|---|---|---|---|\n")

    def __init__(self) -> None:
        self.expected: list[str] = []
        self.rows: dict[str, str] = {}

    def add(self, name: str, *cells: str) -> None:
        self.rows[name] = "| " + " | ".join([name, *cells]) + " |"

    def write(self, path: Path) -> None:
        if not self.expected or set(self.expected) - set(self.rows):
            return  # a partial run (-k, a failure) leaves the last complete table
        path.parent.mkdir(exist_ok=True)
        path.write_text(
            "# Fault matrix\n\n"
            "Produced by the test suite (`pytest tests/reliability/test_fault_matrix.py`), not "
            "written by hand: each row is one fault injected into a running controller (the real "
            f"`Daemon` and its loop, ticks of {TICK_S:g} s, two vLLM replicas or a real "
            "Prometheus, the "
            "Kubernetes API emulator and the local Modal control plane). For every row the suite "
            "checked that the controller kept running, that no tick under the fault scaled a "
            "pool down, that no write was made twice, that it logged the error named here (and "
            "no other, at most one per tick), counted it on "
            "`/metrics`, and was back to clean ticks (decided, applied, no error) within the "
            "ticks shown after the fault cleared.\n\n"
            + self.HEADER + "\n".join(self.rows[name] for name in self.expected) + "\n")


@pytest.fixture(scope="session")
def fault_table() -> Iterator[Table]:
    table = Table()
    yield table
    table.write(TABLE)
