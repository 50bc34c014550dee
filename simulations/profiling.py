"""Measure a live vLLM replica and fit its `ReplicaProfile` (`vllm-autoscaler profile`).

The sweep: a prefill stage (one request at a time, each to an idle server, prompts spread
over the lengths to profile, 1 output token),
then closed-loop load at each concurrency in turn (that many users, each sending its next
streamed completion when the last ends), with prompt and output lengths drawn from a trace
or fixed. The client knows when each request was sent, streamed its first token and ended;
from all of them together it knows, at any moment, which requests were in flight and how
much context they held (a request gains its tokens at an even pace).

The fit: the profile's step model (controller/profile.py),
    step = decode_base + decode_per_seq * batch + decode_per_context_token * context
           + prefill_per_token * prefill_tokens,
plus a per-request overhead outside the engine (`request_overhead_s`: vLLM's HTTP front end,
once in a TTFT, once in a request's life), by robust least squares on two kinds of rows, in
two stages (`fit`):
- TTFT of a request that found the server idle: one step and the overhead,
  `decode_base + overhead + prefill * prompt` (unless vLLM held its first token back until
  the last);
- mean step time over the life of a request the server admitted at once: its end-to-end
  latency over its output tokens (one step per token, the first one carrying its prompt),
  with the mean batch and context over its life and the prompts of the requests sent
  meanwhile (their prefill lengthened its steps). End-to-end rather than inter-token
  latency: vLLM may hold streamed tokens back (`--stream-interval`, or a front end short of
  CPU), so only the request's start and end are trusted.
Its spread (`request_overhead_quantiles_s`) is that of the idle requests' TTFT less one step:
at light load it is most of the TTFT's spread, which a fixed overhead would flatten.
The overhead is latency, not engine time (the front end runs beside the engine): without it
the fit would charge the front end's time to prefill, and the simulator would run out of
capacity early. Coefficients are kept >= 0, and outliers weigh less (a robust loss).
Checked against a CPU vLLM server's own per-step log (`--enable-logging-iteration-details`):
prefill 0.115 ms/token there, 0.12-0.14 fitted on a busy machine.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from ..controller.profile import ReplicaProfile
from .loadgen import (
    Endpoint, EndpointError, LoadClient, Outcome, discover, first_token_held_back, fit_lengths,
    gauge_total, kv_cache_blocks, scrape, session,
)  # fmt: skip
from .traces import Trace

COEFFICIENTS = ("decode_base_s", "decode_per_seq_s", "decode_per_context_token_s", "prefill_per_token_s")
OVERHEAD = "request_overhead_s"  # per request, outside the engine (latency, no engine time)
PREFILL_STAGE_OUTPUT_TOKENS = 1  # the prefill stage's requests: a prompt and its first token
# Between two requests of the prefill stage: sent back to back, a request found the server
# still closing the last one (its TTFT 25 ms over the engine's step, against 10-15 ms when
# it arrived to an idle server, as in a replay).
PREFILL_STAGE_PAUSE_S = 0.05
VLLM_DEFAULT_MAX_NUM_SEQS = 256
WARMUP_REQUESTS = 4  # the first requests to a fresh server are slow (lazy initialisation)
MAX_FAILED_SHARE = 0.05
ROBUST_SCALE = 0.1
TTFT_QUANTILE = 0.25  # of idle TTFT given the prompt: see `fit`
OVERHEAD_LEVELS = 21  # quantiles of the overhead's spread kept in the profile: every 5%
WATCH_EVERY_S = 0.25


class ProfilingError(ValueError):
    """Measurements that cannot give a profile; the message says what is missing."""


# ---- what was measured ----------------------------------------------------------------------
@dataclass(frozen=True)
class Measurements:
    """One entry per completed request; times in seconds from the sweep's start."""

    sent: np.ndarray
    first: np.ndarray
    end: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    concurrency: np.ndarray  # of the stage it was sent in

    COLUMNS = ("sent", "first", "end", "prompt", "output", "concurrency")

    @classmethod
    def of(cls, stages: list[tuple[int, list[Outcome]]]) -> Measurements:
        done = [(c, o) for c, outcomes in stages for o in outcomes if o.error is None]
        if not done:
            raise ProfilingError("no request of the sweep completed")
        zero = min(o.sent for _, o in done)
        return cls(*(np.array(v, dtype=float) for v in zip(*(
            (o.sent - zero, o.first - zero, o.end - zero, o.prompt, o.output, c) for c, o in done
        ))))  # fmt: skip

    def save_csv(self, path: Path) -> None:
        table = np.column_stack([getattr(self, c) for c in self.COLUMNS])
        np.savetxt(path, table, delimiter=",", header=",".join(self.COLUMNS), comments="", fmt="%.6f")

    @classmethod
    def load_csv(cls, path: Path) -> Measurements:
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        return cls(*table.T)


def life_state(m: Measurements, max_num_seqs: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean batch size and mean context tokens over each request's life [sent, end].

    Only when a request was sent and when it ended are trusted: vLLM may hold streamed tokens
    back. A request in flight holds its prompt in the KV cache and gains its output at an
    even pace; up to `max_num_seqs` of those in flight run. Between two sent/end events the
    set in flight is fixed, so the integrals are exact.
    """
    times = np.unique(np.concatenate([m.sent, m.end]))
    start, stop = np.searchsorted(times, m.sent), np.searchsorted(times, m.end)
    span = m.end - m.sent
    rate = m.output / span
    offset = m.prompt - rate * m.sent  # a request's context at t: offset + rate * t

    def in_flight_sum(weights: np.ndarray) -> np.ndarray:  # per segment between events
        delta = np.zeros(len(times))
        np.add.at(delta, start, weights)
        np.add.at(delta, stop, -weights)
        return np.cumsum(delta)[:-1]

    t0, t1 = times[:-1], times[1:]
    dt = t1 - t0
    in_flight = in_flight_sum(np.ones_like(rate))
    running = np.minimum(in_flight, max_num_seqs)
    share = np.divide(running, in_flight, out=np.zeros_like(dt), where=in_flight > 0)
    batch = np.r_[0.0, np.cumsum(running * dt)]
    context = np.r_[0.0, np.cumsum(share * (in_flight_sum(offset) + in_flight_sum(rate) * (t0 + t1) / 2) * dt)]
    return (batch[stop] - batch[start]) / span, (context[stop] - context[start]) / span


def prefills_during_life(m: Measurements) -> np.ndarray:
    """Prompt tokens of the other requests sent while each one was in flight."""
    order = np.argsort(m.sent, kind="stable")
    sent = m.sent[order]
    tokens = np.r_[0.0, np.cumsum(m.prompt[order])]
    lo, hi = np.searchsorted(sent, m.sent, "left"), np.searchsorted(sent, m.end, "left")
    return tokens[hi] - tokens[lo] - m.prompt  # less its own


def others_in_flight(m: Measurements, until: np.ndarray) -> np.ndarray:
    """Other requests in flight at some moment between each request's sending and `until`."""
    sent_by = np.searchsorted(np.sort(m.sent), until, "right") - 1  # not counting itself
    ended_by = np.searchsorted(np.sort(m.end), m.sent, "right")
    return sent_by - ended_by


def alone(m: Measurements) -> np.ndarray:
    """Requests with no other request in flight between being sent and their first token."""
    return others_in_flight(m, m.first) == 0


# ---- the fit --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rows:
    """The fit's design: one row per observation, columns COEFFICIENTS + (OVERHEAD,). Rows of
    TTFT (requests alone on the server) and of mean step time over a request's life (its
    end-to-end latency over its output tokens, for requests the server admitted at once)."""

    x: np.ndarray
    y: np.ndarray
    is_ttft: np.ndarray
    prompt: np.ndarray  # of the request of each row (for plots)
    concurrency: np.ndarray


def design(m: Measurements, max_num_seqs: int) -> Rows:
    lone = alone(m) & ~first_token_held_back(m.sent, m.first, m.end, m.output)
    ttft_x = np.column_stack([np.ones(lone.sum()), np.zeros((lone.sum(), 2)), m.prompt[lone],
                              np.ones(lone.sum())])  # fmt: skip
    admitted = others_in_flight(m, m.sent) < max_num_seqs  # else it waited in vLLM's queue
    batch, context = life_state(m, max_num_seqs)
    prefill_tokens = prefills_during_life(m)
    steps = m.output  # the prefill step, which gives the first token, and one per other token
    life_x = np.column_stack([np.ones(len(m.sent)), batch, context, (m.prompt + prefill_tokens) / steps,
                              1 / steps])[admitted]  # fmt: skip
    if lone.sum() < 3 or admitted.sum() < 3:
        raise ProfilingError(
            f"too few measurements to fit: {lone.sum()} requests alone on the server whose first "
            f"token was not held back (need a concurrency-1 stage), {admitted.sum()} admitted at once"
        )
    return Rows(
        x=np.vstack([ttft_x, life_x]),
        y=np.r_[m.first[lone] - m.sent[lone], (m.end - m.sent)[admitted] / steps[admitted]],
        is_ttft=np.r_[np.ones(lone.sum(), bool), np.zeros(admitted.sum(), bool)],
        prompt=np.r_[m.prompt[lone], m.prompt[admitted]],
        concurrency=np.r_[m.concurrency[lone], m.concurrency[admitted]],
    )


def robust_nonneg_fit(x: np.ndarray, y: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Coefficients >= 0 minimising a soft-L1 loss of the residuals (x @ c - y) / scale: past
    ROBUST_SCALE of `scale` a residual counts linearly, so that a few requests stalled by
    something else on the machine do not drag the fit."""
    from scipy.optimize import least_squares

    columns = np.abs(x).max(axis=0)
    columns[columns == 0] = 1.0
    xs = x / columns
    start = np.linalg.lstsq(xs, y, rcond=None)[0].clip(min=0)
    fitted = least_squares(lambda c: (xs @ c - y) / scale, start, bounds=(0, np.inf),
                           loss="soft_l1", f_scale=ROBUST_SCALE)  # fmt: skip
    return fitted.x / columns


def quantile_nonneg_fit(x: np.ndarray, y: np.ndarray, q: float) -> np.ndarray:
    """Coefficients >= 0 of the `q`-th quantile of y given x (linear quantile regression: the
    least pinball loss, as a linear program)."""
    from scipy.optimize import linprog

    n, k = x.shape
    cost = np.r_[np.zeros(k), np.full(n, q), np.full(n, 1 - q)]  # coefficients, over, under
    solved = linprog(cost, A_eq=np.hstack([x, np.eye(n), -np.eye(n)]), b_eq=y,
                     bounds=(0, None), method="highs")  # fmt: skip
    if not solved.success:
        raise ProfilingError(f"the TTFT fit failed: {solved.message}")
    return solved.x[:k]


@dataclass(frozen=True)
class Fit:
    coefficients: dict[str, float]  # the profile's
    request_overhead_s: float  # per request, outside the engine: the profile has no room for it
    request_overhead_quantiles_s: tuple[float, ...]  # its spread over the idle requests
    ttft_error: float  # median |relative error|, TTFT rows
    step_error: float  # rows of mean step time over a request's life
    rows: Rows = field(repr=False)

    def predict(self, with_overhead: bool = True) -> np.ndarray:
        overhead = self.request_overhead_s if with_overhead else 0.0
        return self.rows.x @ np.array([*self.coefficients.values(), overhead])


def fit(m: Measurements, max_num_seqs: int) -> Fit:
    """The profile's coefficients and the per-request overhead, by robust fits in two stages.

    1. TTFT of requests alone on the server: `c0 + prefill_per_token * prompt`, where c0 is
       one step's base plus the overhead (the two are one constant there); its lower quartile
       (TTFT_QUANTILE), not its middle: a busy machine only ever adds delay, long-tailed and
       the more the longer a request takes, which tilts a median line (on a CPU server whose
       own step log said 0.11 ms per prompt token, the median line said 0.14, the lower
       quartile 0.12).
    2. Mean step time over a request's life, less its prefill (stage 1's cost per token) and
       c0 once: `decode_base * (1 - 1/steps) + decode_per_seq * batch + decode_per_context
       * context`; then the overhead is what c0 leaves of decode_base.
    In one joint fit, the life rows (more, and noisier on a busy machine) pulled prefill and
    overhead apart: the cost per prompt token came out 60% high, the overhead near 0.
    """
    rows = design(m, max_num_seqs)
    ttft, x, y = rows.is_ttft, rows.x, rows.y
    c0, prefill = quantile_nonneg_fit(x[ttft][:, [0, 3]], y[ttft], TTFT_QUANTILE)
    life = ~ttft & (x[:, 4] < 1)  # more than one step: something to learn about decode
    if life.sum() < 3:
        raise ProfilingError(f"too few requests of more than one output token admitted at once: {life.sum()}")
    per_step = x[life][:, 4]
    decode = y[life] - prefill * x[life][:, 3] - c0 * per_step
    base, per_seq, per_context = robust_nonneg_fit(
        np.column_stack([1 - per_step, x[life][:, 1], x[life][:, 2]]), decode,
        np.full(life.sum(), np.median(y[life])))  # fmt: skip
    coefficients = dict(zip(COEFFICIENTS, map(float, (base, per_seq, per_context, prefill))))
    overhead = max(float(c0 - base), 0.0)
    # Each idle request's own time outside the engine: what its TTFT leaves of one step.
    own = np.maximum(y[ttft] - base - prefill * x[ttft][:, 3], 0.0)
    spread = tuple(float(v) for v in np.quantile(own, np.linspace(0, 1, OVERHEAD_LEVELS)))
    relative = np.abs(x @ np.r_[list(coefficients.values()), overhead] / y - 1)
    return Fit(
        coefficients, overhead, spread,
        ttft_error=float(np.median(relative[ttft])), step_error=float(np.median(relative[life])), rows=rows,
    )  # fmt: skip


# ---- the sweep ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lengths:
    """Prompt/output length pairs to draw requests from."""

    prompt: np.ndarray
    output: np.ndarray
    label: str

    @classmethod
    def fixed(cls, prompt: int, output: int) -> Lengths:
        return cls(np.array([prompt]), np.array([output]), f"{prompt} prompt / {output} output tokens")

    @classmethod
    def of_trace(cls, trace: Trace) -> Lengths:
        return cls(trace.prompt_tokens, trace.output_tokens, f"lengths of trace {trace.name}")

    def sampler(self, max_model_len: int, rng: np.random.Generator) -> Callable[[], tuple[int, int]]:
        if len(self.prompt) == 1 and self.prompt[0] + self.output[0] > max_model_len:
            raise ProfilingError(f"{self.label} do not fit the model's context of {max_model_len} tokens")
        return _draw(*fit_lengths(self.prompt, self.output, max_model_len), rng)

    def prefill_sampler(self, max_model_len: int, rng: np.random.Generator) -> Callable[[], tuple[int, int]]:
        """The prefill stage's requests: prompts spread evenly over the lengths to profile (a
        fixed one from a quarter to twice its length), so that the cost per token shows apart
        from the cost per request, and PREFILL_STAGE_OUTPUT_TOKENS out. Even, not as the
        trace has them: a trace's prompts bunch up, and a busy machine's noise then tilts the
        slope."""
        fitted, _ = fit_lengths(self.prompt, self.output, max_model_len)
        low, high = (fitted.min(), fitted.max()) if len(fitted) > 1 else (fitted[0] / 4, fitted[0] * 2)
        prompt = np.round(np.linspace(low, high, 16))
        prompt = np.clip(prompt, 1, max_model_len - PREFILL_STAGE_OUTPUT_TOKENS).astype(int)
        return _draw(prompt, np.full(len(prompt), PREFILL_STAGE_OUTPUT_TOKENS), rng)


def _draw(prompt: np.ndarray, output: np.ndarray, rng: np.random.Generator) -> Callable[[], tuple[int, int]]:
    def draw() -> tuple[int, int]:
        i = rng.integers(len(prompt))
        return int(prompt[i]), int(output[i])

    return draw


@dataclass(frozen=True)
class SweepOptions:
    lengths: Lengths
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    duration_s: float = 20.0  # per concurrency
    seed: int = 0
    model: str | None = None


@dataclass(frozen=True)
class Sweep:
    endpoint: Endpoint
    measurements: Measurements
    kv_cache_tokens: int  # num_gpu_blocks x block_size
    max_running: int  # the most requests the server reported running at once
    max_waiting: int
    failed: int
    load_average: float  # the machine's 1-minute load average at the end
    started: datetime
    kv_block_size: int = 16  # tokens per KV block (vLLM's CPU backend: 128)


async def _watch(client, url: str, seen: dict[str, float], stop: asyncio.Event) -> None:
    """Sample the server's running and waiting gauges until `stop`."""
    while not stop.is_set():
        text = await scrape(client, url)
        for name in ("num_requests_running", "num_requests_waiting"):
            seen[name] = max(seen.get(name, 0.0), gauge_total(text, name))
        try:
            await asyncio.wait_for(stop.wait(), WATCH_EVERY_S)
        except asyncio.TimeoutError:
            pass


async def run_sweep(url: str, options: SweepOptions, on_stage: Callable[[str], None] | None = None) -> Sweep:
    started = datetime.now(timezone.utc)
    async with session() as client:
        endpoint = await discover(client, url, options.model)
        kv_blocks, kv_block_size = kv_cache_blocks(await scrape(client, endpoint.url))
        load = LoadClient(client, endpoint, options.seed)
        rng = np.random.default_rng(options.seed)
        draw = options.lengths.sampler(endpoint.max_model_len, rng)
        for _ in range(WARMUP_REQUESTS):
            await load.complete(*draw())
        prefill_draw = options.lengths.prefill_sampler(endpoint.max_model_len, rng)
        seen: dict[str, float] = {}
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch(client, endpoint.url, seen, stop))
        stages = []
        try:
            if on_stage:
                on_stage("prefill stage")
            stages.append((1, await load.closed_loop(1, options.duration_s, prefill_draw, PREFILL_STAGE_PAUSE_S)))
            for concurrency in options.concurrency:
                if on_stage:
                    on_stage(f"concurrency {concurrency}")
                stages.append((concurrency, await load.closed_loop(concurrency, options.duration_s, draw)))
        finally:
            stop.set()
            await watcher
    failed = [o.error for _, outcomes in stages for o in outcomes if o.error]
    total = sum(len(outcomes) for _, outcomes in stages)
    if len(failed) > MAX_FAILED_SHARE * total:
        raise EndpointError(f"{len(failed)} of {total} requests failed, e.g. {failed[0]}")
    return Sweep(endpoint, Measurements.of(stages), kv_blocks * kv_block_size, int(seen.get("num_requests_running", 0)),
                 int(seen.get("num_requests_waiting", 0)), len(failed), os.getloadavg()[0], started,
                 kv_block_size)  # fmt: skip


def resolve_max_num_seqs(sweep: Sweep, option: int | None) -> tuple[int, str]:
    """The option, else what the server was seen running at most while requests waited
    (its max_num_seqs, or what its KV cache allows), else vLLM's default; and how it was got."""
    if option is not None:
        return option, "max_num_seqs given"
    if sweep.max_waiting > 0 and sweep.max_running < sweep.measurements.concurrency.max():
        return sweep.max_running, "max_num_seqs seen (requests waited)"
    return VLLM_DEFAULT_MAX_NUM_SEQS, "max_num_seqs not reached: vLLM's default assumed"


def build_profile(sweep: Sweep, fitted: Fit, name: str, gpu: str, max_num_seqs: tuple[int, str],
                  max_num_batched_tokens: int, kv_watermark: float = 0.0) -> ReplicaProfile:
    """The profile of the swept server; `kv_watermark` is its --watermark (vLLM V1: 0 unless
    set), which /metrics does not show."""
    m = sweep.measurements
    source = (
        f"measured by `vllm-autoscaler profile` on {sweep.started:%Y-%m-%d %H:%M} UTC against "
        f"{sweep.endpoint.url} ({sweep.endpoint.model}): {len(m.sent)} requests at concurrency "
        f"{','.join(str(int(c)) for c in np.unique(m.concurrency))}; {max_num_seqs[1]}; "
        f"load average {sweep.load_average:.1f}"
    )
    if fitted.coefficients["prefill_per_token_s"] <= 0 or fitted.coefficients["decode_base_s"] <= 0:
        raise ProfilingError(f"the fit gave no positive prefill or base step time: {fitted.coefficients}")
    return ReplicaProfile(
        name=name, model=sweep.endpoint.model, gpu=gpu, source=source, max_num_seqs=max_num_seqs[0],
        max_num_batched_tokens=max_num_batched_tokens, kv_cache_tokens=sweep.kv_cache_tokens,
        kv_block_size=sweep.kv_block_size, kv_watermark=kv_watermark,
        request_overhead_s=fitted.request_overhead_s,
        request_overhead_quantiles_s=fitted.request_overhead_quantiles_s, **fitted.coefficients,
    )  # fmt: skip


# ---- the output -----------------------------------------------------------------------------
def fit_summary(fitted: Fit) -> list[str]:
    return [
        f"fit: median relative error TTFT {fitted.ttft_error:.1%}, step time {fitted.step_error:.1%}",
        f"request_overhead_s: {fitted.request_overhead_s * 1e3:.2f} ms per request outside the "
        "engine (HTTP front end), in every TTFT and E2E",
    ]


def write_profile(profile: ReplicaProfile, fitted: Fit, sweep: Sweep, path: Path) -> list[Path]:
    """The profile YAML, the measurements (CSV) and the fit's plot, side by side."""
    path.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n" for line in fit_summary(fitted))
    path.write_text(comments + yaml.safe_dump(profile.model_dump(), sort_keys=False))
    csv = path.with_name(f"{path.stem}-requests.csv")
    sweep.measurements.save_csv(csv)
    png = path.with_name(f"{path.stem}-fit.png")
    plot_fit(fitted, profile.name, png)
    return [path, csv, png]


def plot_fit(fitted: Fit, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, predicted = fitted.rows, fitted.predict()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    t = rows.is_ttft
    left.scatter(rows.prompt[t], rows.y[t] * 1e3, s=10, alpha=0.6, label="measured (server idle)")
    order = np.argsort(rows.prompt[t])
    left.plot(rows.prompt[t][order], predicted[t][order] * 1e3, "r-", label="fit: base + prefill x prompt + overhead")
    left.plot(rows.prompt[t][order], fitted.predict(with_overhead=False)[t][order] * 1e3, "k:",
              label="the engine's share (no per-request overhead)")  # fmt: skip
    left.set(xlabel="prompt tokens", ylabel="TTFT (ms)", title="TTFT at low load")
    left.legend(fontsize=8)
    d = ~t
    for c in np.unique(rows.concurrency[d]):
        at = d & (rows.concurrency == c)
        right.scatter(predicted[at] * 1e3, rows.y[at] * 1e3, s=8, alpha=0.5, label=f"concurrency {int(c)}")
    top = max(rows.y[d].max(), predicted[d].max()) * 1e3
    right.plot([0, top], [0, top], "k--", lw=1)
    right.set(xlabel="profile (ms)", ylabel="measured (ms)",
              title="Mean step time over a request's life (E2E / output tokens)")  # fmt: skip
    right.legend(fontsize=8)
    fig.suptitle(f"{title}: fit against measurement")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
