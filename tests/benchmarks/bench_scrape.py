"""One direct-scrape collection from 100 vLLM replicas; the goal is <= 1 s on 2 cores.

100 exporters serve the /metrics page recorded from a real vLLM 0.32 server, from a process of
their own (as remote replicas would); this process times ScrapeMetrics.collect() over them.
Run: `.venv/bin/python tests/benchmarks/bench_scrape.py`.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vllm_autoscaler.metrics.scrape import ScrapeMetrics, static_targets

TESTS = Path(__file__).resolve().parents[1]
REPLICAS = 100
COLLECTIONS = 10
GOAL_S = 1.0


async def time_collections(urls: list[str]) -> list[float]:
    source = ScrapeMetrics(static_targets(urls), timeout_s=5)
    durations = []
    try:
        for _ in range(COLLECTIONS):
            started = time.perf_counter()
            observation = await source.collect()
            durations.append(time.perf_counter() - started)
            if observation.replicas_reporting.value != REPLICAS:
                raise SystemExit(f"only {observation.replicas_reporting.value} replicas answered")
    finally:
        await source.aclose()
    return durations


def main() -> None:
    exporters = subprocess.Popen(
        [sys.executable, str(TESTS / "emulators" / "vllm_exporter.py"), str(REPLICAS),
         str(TESTS / "data" / "vllm_metrics_0.32.txt")], stdout=subprocess.PIPE, text=True)
    try:
        urls = [exporters.stdout.readline().strip() for _ in range(REPLICAS)]
        durations = asyncio.run(time_collections(urls))
    finally:
        exporters.terminate()
        exporters.wait()
    first, rest = durations[0], durations[1:]
    print(f"scrape collection from {REPLICAS} replicas (goal <= {GOAL_S:.1f} s): "
          f"first {first:.3f} s (new connections), then median {statistics.median(rest):.3f} s, "
          f"max {max(rest):.3f} s over {len(rest)}")


if __name__ == "__main__":
    main()
