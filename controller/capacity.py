"""How many requests per second one replica serves within the latency SLO.

A steady-state model of the continuous-batching engine described by a `ReplicaProfile`.
At arrival rate λ with mean prompt P and output O tokens, each second the engine spends
λ·P·prefill_per_token on prompts and runs decode steps for λ·O tokens. Solving for the
decode batch B gives a closed form for the inter-token latency,

    ITL = decode_base / (1 - ρ),   ρ = λ·(O·(per_seq + per_ctx·(P + O/2)) + P·prefill_per_token)

and the time to first token is one step plus the prompt's own prefill plus a queueing wait
for the prefill budget, whose tail grows like u/(1-u) with the prefill utilisation u.
The capacity is the largest λ meeting TTFT, ITL, `max_num_seqs` and the KV cache.
The controller corrects this estimate online from measured latencies (feedback), so it need
not be exact; tests check it against the simulator's engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from .profile import ReplicaProfile

# p99 of an exponential-tailed wait relative to its mean.
TAIL_P99 = math.log(100)
# Real prompt lengths are skewed: the p99 prompt is several times the mean (3.6× in the
# Azure 2023 traces), and the TTFT SLO is a p99 target.
PROMPT_P99_TO_MEAN = 3.5
# Context lengths vary as much: the mean batch may only fill this share of the KV cache
# before the longest sequences cause queueing and preemption.
KV_SAFE_FRACTION = 0.5


@dataclass(frozen=True, slots=True)
class LoadPoint:
    ttft_s: float
    itl_s: float
    batch: float
    feasible: bool


def load_point(profile: ReplicaProfile, rate: float, prompt: float, output: float) -> LoadPoint:
    """Predicted p99-ish TTFT, ITL and decode batch of one replica at `rate` requests/s."""
    per_token = profile.decode_per_seq_s + profile.decode_per_context_token_s * (prompt + output / 2)
    rho = rate * (output * per_token + prompt * profile.prefill_per_token_s)
    if rho >= 1:
        return LoadPoint(math.inf, math.inf, math.inf, False)
    itl = profile.decode_base_s / (1 - rho)
    batch = rate * output * itl
    step = profile.step_seconds(int(batch), batch * (prompt + output / 2), 0)
    prefill_budget = max(profile.max_num_batched_tokens - batch, 1.0)

    def prefill_s(tokens: float) -> float:
        return math.ceil(tokens / prefill_budget) * step + tokens * profile.prefill_per_token_s

    # Prefill utilisation: prompt tokens per second against what the budget can carry.
    carried = prefill_budget / (step + prefill_budget * profile.prefill_per_token_s)
    u = rate * prompt / carried
    if u >= 1:
        return LoadPoint(math.inf, itl, batch, False)
    ttft = step + prefill_s(PROMPT_P99_TO_MEAN * prompt) + TAIL_P99 * prefill_s(prompt) * u / (1 - u)
    kv_mean = batch * (prompt + output / 2)
    fits = batch <= profile.max_num_seqs and kv_mean <= KV_SAFE_FRACTION * profile.kv_cache_tokens
    return LoadPoint(ttft, itl, batch, fits)


@lru_cache(maxsize=4096)
def replica_capacity(
    profile: ReplicaProfile, ttft_slo_s: float, itl_slo_s: float, prompt: float, output: float
) -> float:
    """Largest arrival rate (requests/s) one replica serves within both SLOs (0 if none)."""
    prompt, output = max(prompt, 1.0), max(output, 1.0)

    def ok(rate: float) -> bool:
        point = load_point(profile, rate, prompt, output)
        return point.feasible and point.ttft_s <= ttft_slo_s and point.itl_s <= itl_slo_s

    return _largest_rate(ok)


def _largest_rate(ok) -> float:
    """Bisection for the largest rate where `ok` holds (0 if none)."""
    if not ok(1e-6):
        return 0.0
    low, high = 1e-6, 1.0
    while ok(high):
        low, high = high, high * 2
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if ok(mid) else (low, mid)
    return low
