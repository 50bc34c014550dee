"""A vLLM replica's past as Prometheus would have stored it: OpenMetrics samples with their
timestamps, every 15 s, for `promtool tsdb create-blocks-from openmetrics` to import.

Requests arrive at `rate_at(seconds before the end)` per second, each with PROMPT prompt
tokens, OUTPUT generated tokens and a time to first token in (0.1, 0.5] s, or over 5 s in the
`slow` stretches; `gaps` are stretches with no sample at all, as when nothing scraped
(stretches: pairs of seconds before the end).
"""

from __future__ import annotations

from collections.abc import Callable

STEP_S = 15
PROMPT, OUTPUT = 1000, 200
TTFT_BUCKETS = ("0.1", "0.5", "5.0", "+Inf")
Stretches = tuple[tuple[float, float], ...]


def within(stretches: Stretches, before: float) -> bool:
    return any(min(s) <= before <= max(s) for s in stretches)


def vllm_history(end: int, seconds: int, rate_at: Callable[[float], float], labels: dict[str, str],
                 gaps: Stretches = (), slow: Stretches = ()) -> str:
    tags = ",".join(f'{k}="{v}"' for k, v in labels.items())
    families: dict[str, tuple[str, list[str]]] = {
        "vllm:request_success": ("counter", []), "vllm:prompt_tokens": ("counter", []),
        "vllm:generation_tokens": ("counter", []), "vllm:num_requests_running": ("gauge", []),
        "vllm:num_requests_waiting": ("gauge", []), "vllm:kv_cache_usage_perc": ("gauge", []),
        "vllm:time_to_first_token_seconds": ("histogram", []),
    }  # fmt: skip
    fast = late = 0.0  # requests so far with a first token within 0.5 s, after 5 s
    for at in range(end - seconds, end + 1, STEP_S):
        before = end - at
        rate = rate_at(before)
        if within(slow, before):
            late += rate * STEP_S
        else:
            fast += rate * STEP_S
        finished = fast + late
        if within(gaps, before):
            continue

        def add(name: str, value: float, series: str = "", extra: str = "") -> None:
            families[name][1].append(f"{name}{series}{{{tags}{extra}}} {value} {at}")

        add("vllm:request_success", finished, "_total")
        add("vllm:prompt_tokens", finished * PROMPT, "_total")
        add("vllm:generation_tokens", finished * OUTPUT, "_total")
        add("vllm:num_requests_running", 2 * rate)
        add("vllm:num_requests_waiting", 0)
        add("vllm:kv_cache_usage_perc", 0.3)
        ttft = "vllm:time_to_first_token_seconds"
        for le, count in zip(TTFT_BUCKETS, (0, fast, fast, finished), strict=True):
            add(ttft, count, "_bucket", f',le="{le}"')
        add(ttft, finished, "_count")
        add(ttft, 0.3 * fast + 8 * late, "_sum")
    lines = []
    for name, (kind, samples) in families.items():
        lines += [f"# TYPE {name} {kind}", *samples]
    return "\n".join([*lines, "# EOF"]) + "\n"
