"""The vLLM series the sources read, under every name vLLM releases have used for them.

vLLM renamed some metrics across releases (`gpu_cache_usage_perc` became `kv_cache_usage_perc`,
`time_per_output_token_seconds` became `inter_token_latency_seconds`), and some pipelines
rewrite `vllm:` to `vllm_` or drop the prefix. Rather than pin a version, the sources look at
which series exist and take the newest spelling present.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum


class Kind(Enum):
    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


class Signal(Enum):
    """A vLLM metric and its names, newest first (series names: counters end in `_total`)."""

    RUNNING = (Kind.GAUGE, "num_requests_running")
    WAITING = (Kind.GAUGE, "num_requests_waiting")
    KV_USAGE = (Kind.GAUGE, "kv_cache_usage_perc", "gpu_cache_usage_perc")
    TTFT = (Kind.HISTOGRAM, "time_to_first_token_seconds")
    ITL = (Kind.HISTOGRAM, "inter_token_latency_seconds", "time_per_output_token_seconds")
    # Finished requests (every finish reason, aborts included): the arrival rate once the
    # queue is steady; the queued rest shows in WAITING.
    FINISHED = (Kind.COUNTER, "request_success_total")
    PROMPT_TOKENS = (Kind.COUNTER, "prompt_tokens_total")
    OUTPUT_TOKENS = (Kind.COUNTER, "generation_tokens_total")

    def __init__(self, kind: Kind, *names: str) -> None:
        self.kind = kind
        self.names = names

    @property
    def spellings(self) -> tuple[str, ...]:
        """Series names to look for, in order of preference (histograms: the `_bucket` series)."""
        suffix = "_bucket" if self.kind is Kind.HISTOGRAM else ""
        return tuple(prefix + name + suffix for name in self.names for prefix in PREFIXES)


PREFIXES = ("vllm:", "vllm_", "")

ALL_SPELLINGS: tuple[str, ...] = tuple(s for signal in Signal for s in signal.spellings)


def detect(present: Collection[str]) -> dict[Signal, str]:
    """The series name of each signal among the `present` series names; absent signals left out."""
    found = {}
    for signal in Signal:
        name = next((s for s in signal.spellings if s in present), None)
        if name is not None:
            found[signal] = name
    return found


# What the controller cannot decide without: in-flight work and the arrival rate.
ESSENTIAL = (Signal.RUNNING, Signal.WAITING, Signal.FINISHED)


def absent_essentials(found: Collection[Signal]) -> list[str]:
    """A line for each essential signal not `found` under any of its names."""
    return [f"no series vllm:{signal.names[0]} (under any known name: renamed by this vLLM "
            "release, or not scraped?)" for signal in ESSENTIAL if signal not in found]
