"""What the daemon tests share: vLLM /metrics pages, the config of the small world in
conftest.py, polling."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

PROFILE = Path(__file__).parent / "data" / "cpu-tiny-llama.yaml"
APP, FUNCTION, DEPLOYMENT = "vllm-inference", "serve", "vllm-tiny"


def vllm_page(*, running: float = 0, waiting: float = 0, finished: int = 0,
              prompt_tokens: int = 0, output_tokens: int = 0) -> str:
    """A vLLM /metrics page as prometheus_client (vLLM's exporter) writes it."""
    registry = CollectorRegistry()
    labels = {"engine": "0", "model_name": "tiny-llama"}
    for name, value in (("vllm:num_requests_running", running),
                        ("vllm:num_requests_waiting", waiting),
                        ("vllm:kv_cache_usage_perc", 0.5 if running else 0.0)):
        Gauge(name, name, list(labels), registry=registry).labels(**labels).set(value)
    Counter("vllm:request_success", "finished", [*labels, "finished_reason"],
            registry=registry).labels(**labels, finished_reason="length").inc(finished)
    for name, value in (("vllm:prompt_tokens", prompt_tokens),
                        ("vllm:generation_tokens", output_tokens)):
        Counter(name, name, list(labels), registry=registry).labels(**labels).inc(value)
    return generate_latest(registry).decode()


def busy_page(finished: int) -> str:
    """A replica overwhelmed by short requests: `finished` so far, 20 waiting."""
    return vllm_page(running=8, waiting=20, finished=finished, prompt_tokens=10 * finished,
                     output_tokens=60 * finished)


def config_dict(replica_url: str) -> dict:
    return {
        "tick_seconds": 0.5,
        "targets": [{
            "name": "tiny", "model": "tiny-llama", "profile": str(PROFILE),
            "kubernetes": {"deployment": DEPLOYMENT, "min_replicas": 1, "max_replicas": 10},
            "modal": {"app": APP, "function": FUNCTION, "max_containers": 10,
                      "scaledown_window_seconds": 30},
            "policy": {"controller": {"base_load_window_seconds": 1}},
        }],
        "metrics": {"source": "direct", "direct": {"targets": [replica_url]}},
        "leader_election": {"lease_name": "vllm-autoscaler", "lease_duration_seconds": 3,
                            "renew_deadline_seconds": 2, "retry_period_seconds": 0.5},
    }


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 10,
                     what: str = "condition") -> None:
    """Poll `check` until true; fail naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
