"""Measure a live vLLM replica and fit its `ReplicaProfile` (`vllm-autoscaler profile`).

The sweep: closed-loop load at each concurrency in turn (that many users, each sending its
next streamed completion when the last ends), with prompt and output lengths drawn from a
trace or fixed. The client sees when each request was sent, streamed its first token and
ended; from all of them together it knows, at any moment, which requests were decoding and
how much context they held (a request's tokens arrive at an even pace between its first and
last token).

The fit: the profile's step model (controller/profile.py),
    step = decode_base + decode_per_seq * batch + decode_per_context_token * context
           + prefill_per_token * prefill_tokens,
by least squares on two kinds of rows, each kind in units of its median (relative errors)
and weighing as much as the other:
- TTFT of a request that found the server idle: one step, `decode_base + prefill * prompt`;
- mean inter-token latency of every request: its decode steps averaged, with the mean batch
  and context over its decode span and the prompts that other requests prefilled meanwhile
  (those steps were longer) spread over its tokens.
Coefficients are kept >= 0, and outliers weigh less (a robust loss). A second fit with two terms the profile has no room for (a fixed
cost per step that carries prefill, and a TTFT overhead outside the engine) is reported next
to it, to show how far the model is from what was measured.
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
    Endpoint, EndpointError, LoadClient, Outcome, discover, fit_lengths, gauge_total,
    kv_cache_tokens, scrape, session,
)  # fmt: skip
from .traces import Trace

COEFFICIENTS = ("decode_base_s", "decode_per_seq_s", "decode_per_context_token_s", "prefill_per_token_s")
EXTRA_TERMS = ("prefill_step_s", "ttft_overhead_s")  # not in the profile's model: diagnostics
VLLM_DEFAULT_MAX_NUM_SEQS = 256
WARMUP_REQUESTS = 4  # the first requests to a fresh server are slow (lazy initialisation)
MAX_FAILED_SHARE = 0.05
ROBUST_SCALE = 0.1


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


def decoding_state(m: Measurements) -> tuple[np.ndarray, np.ndarray]:
    """Mean batch size and mean context tokens over each request's decode span [first, end].

    Between two first/end events the decoding set is fixed: the batch is constant and the
    context grows linearly (each request by its own token rate), so the integrals are exact.
    """
    times = np.unique(np.concatenate([m.first, m.end]))
    start, stop = np.searchsorted(times, m.first), np.searchsorted(times, m.end)
    span = m.end - m.first
    rate = np.divide(m.output - 1, span, out=np.zeros_like(span), where=span > 0)
    offset = m.prompt + 1 - rate * m.first  # a request's context at t: offset + rate * t

    def decoding_sum(weights: np.ndarray) -> np.ndarray:  # per segment between events
        delta = np.zeros(len(times))
        np.add.at(delta, start, weights)
        np.add.at(delta, stop, -weights)
        return np.cumsum(delta)[:-1]

    t0, t1 = times[:-1], times[1:]
    dt = t1 - t0
    batch = np.r_[0.0, np.cumsum(decoding_sum(np.ones_like(rate)) * dt)]
    context = np.r_[0.0, np.cumsum(decoding_sum(offset) * dt + decoding_sum(rate) * dt * (t0 + t1) / 2)]
    safe = np.where(span > 0, span, 1.0)
    return (batch[stop] - batch[start]) / safe, (context[stop] - context[start]) / safe


def prefills_during_decode(m: Measurements) -> tuple[np.ndarray, np.ndarray]:
    """Prompt tokens, and prompts, of other requests that got their first token while each
    request was decoding (first, end]."""
    order = np.argsort(m.first, kind="stable")
    firsts = m.first[order]
    tokens = np.r_[0.0, np.cumsum(m.prompt[order])]
    lo, hi = np.searchsorted(firsts, m.first, "right"), np.searchsorted(firsts, m.end, "right")
    return tokens[hi] - tokens[lo], (hi - lo).astype(float)


def alone(m: Measurements) -> np.ndarray:
    """Requests with no other request in flight between being sent and their first token."""
    sent, ends = np.sort(m.sent), np.sort(m.end)
    started_before_first = np.searchsorted(sent, m.first, "left")
    ended_before_sent = np.searchsorted(ends, m.sent, "right")
    return started_before_first - ended_before_sent - 1 == 0


# ---- the fit --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rows:
    """The fit's design: one row per TTFT or ITL observation; columns COEFFICIENTS + EXTRA_TERMS."""

    x: np.ndarray
    y: np.ndarray
    is_ttft: np.ndarray
    prompt: np.ndarray  # of the request of each row (for plots)
    concurrency: np.ndarray


def design(m: Measurements) -> Rows:
    lone = alone(m)
    ttft_x = np.column_stack([np.ones(lone.sum()), np.zeros((lone.sum(), 2)), m.prompt[lone],
                              np.ones((lone.sum(), 2))])  # fmt: skip
    decodes = m.output >= 2
    batch, context = decoding_state(m)
    prefill_tokens, prefills = prefills_during_decode(m)
    steps = m.output - 1
    itl_x = np.column_stack([np.ones(len(m.sent)), batch, context, prefill_tokens / steps,
                             prefills / steps, np.zeros(len(m.sent))])[decodes]  # fmt: skip
    if lone.sum() < 3 or decodes.sum() < 3:
        raise ProfilingError(
            f"too few measurements to fit: {lone.sum()} requests alone on the server (need a "
            f"concurrency-1 stage), {decodes.sum()} with 2+ output tokens"
        )
    return Rows(
        x=np.vstack([ttft_x, itl_x]),
        y=np.r_[m.first[lone] - m.sent[lone], (m.end - m.first)[decodes] / steps[decodes]],
        is_ttft=np.r_[np.ones(lone.sum(), bool), np.zeros(decodes.sum(), bool)],
        prompt=np.r_[m.prompt[lone], m.prompt[decodes]],
        concurrency=np.r_[m.concurrency[lone], m.concurrency[decodes]],
    )


def robust_nonneg_fit(x: np.ndarray, y: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Coefficients >= 0 minimising a soft-L1 loss of the residuals (x @ c - y) / scale: past
    ROBUST_SCALE of `scale` a residual counts linearly, so that requests whose stream the
    server merged (every token at once: ITL ~ 0) or that a neighbour's burst of CPU stalled do
    not drag the fit."""
    from scipy.optimize import least_squares

    columns = np.abs(x).max(axis=0)
    columns[columns == 0] = 1.0
    xs = x / columns
    start = np.linalg.lstsq(xs, y, rcond=None)[0].clip(min=0)
    fitted = least_squares(lambda c: (xs @ c - y) / scale, start, bounds=(0, np.inf),
                           loss="soft_l1", f_scale=ROBUST_SCALE)  # fmt: skip
    return fitted.x / columns


@dataclass(frozen=True)
class Fit:
    coefficients: dict[str, float]  # the profile's
    extended: dict[str, float]  # with EXTRA_TERMS
    ttft_error: float  # median |relative error| of the profile's model, TTFT rows
    itl_error: float
    extended_ttft_error: float
    extended_itl_error: float
    rows: Rows = field(repr=False)

    def predict(self, extended: bool = False) -> np.ndarray:
        coef = self.extended if extended else self.coefficients
        return self.rows.x[:, : len(coef)] @ np.array(list(coef.values()))


def _fit_columns(rows: Rows, columns: int) -> np.ndarray:
    # Each kind of row in units of its median (relative errors) and weighing as much in all.
    kinds = (rows.is_ttft, ~rows.is_ttft)
    scale = sum(k * np.median(rows.y[k]) * np.sqrt(2 * k.sum() / len(rows.y)) for k in kinds)
    return robust_nonneg_fit(rows.x[:, :columns], rows.y, scale)


def fit(m: Measurements) -> Fit:
    rows = design(m)
    base = dict(zip(COEFFICIENTS, _fit_columns(rows, len(COEFFICIENTS))))
    extended = dict(zip(COEFFICIENTS + EXTRA_TERMS, _fit_columns(rows, len(COEFFICIENTS + EXTRA_TERMS))))
    errors = {}
    for name, coef in (("", base), ("extended_", extended)):
        relative = np.abs(rows.x[:, : len(coef)] @ np.array(list(coef.values())) / rows.y - 1)
        errors[f"{name}ttft_error"] = float(np.median(relative[rows.is_ttft]))
        errors[f"{name}itl_error"] = float(np.median(relative[~rows.is_ttft]))
    return Fit(base, extended, rows=rows, **errors)


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
        prompt, output = fit_lengths(self.prompt, self.output, max_model_len)

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
    kv_cache_tokens: int
    max_running: int  # the most requests the server reported running at once
    max_waiting: int
    failed: int
    load_average: float  # the machine's 1-minute load average at the end
    started: datetime


async def _watch(client, url: str, seen: dict[str, float], stop: asyncio.Event) -> None:
    """Sample the server's running and waiting gauges until `stop`."""
    while not stop.is_set():
        text = await scrape(client, url)
        for name in ("num_requests_running", "num_requests_waiting"):
            seen[name] = max(seen.get(name, 0.0), gauge_total(text, name))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass


async def run_sweep(url: str, options: SweepOptions, on_stage: Callable[[int], None] | None = None) -> Sweep:
    started = datetime.now(timezone.utc)
    async with session() as client:
        endpoint = await discover(client, url, options.model)
        kv_tokens = kv_cache_tokens(await scrape(client, endpoint.url))
        load = LoadClient(client, endpoint, options.seed)
        draw = options.lengths.sampler(endpoint.max_model_len, np.random.default_rng(options.seed))
        for _ in range(WARMUP_REQUESTS):
            await load.complete(*draw())
        seen: dict[str, float] = {}
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch(client, endpoint.url, seen, stop))
        stages = []
        try:
            for concurrency in options.concurrency:
                if on_stage:
                    on_stage(concurrency)
                stages.append((concurrency, await load.closed_loop(concurrency, options.duration_s, draw)))
        finally:
            stop.set()
            await watcher
    failed = [o.error for _, outcomes in stages for o in outcomes if o.error]
    total = sum(len(outcomes) for _, outcomes in stages)
    if len(failed) > MAX_FAILED_SHARE * total:
        raise EndpointError(f"{len(failed)} of {total} requests failed, e.g. {failed[0]}")
    return Sweep(endpoint, Measurements.of(stages), kv_tokens, int(seen.get("num_requests_running", 0)),
                 int(seen.get("num_requests_waiting", 0)), len(failed), os.getloadavg()[0], started)  # fmt: skip


def max_num_seqs_seen(sweep: Sweep) -> int | None:
    """The server's max_num_seqs if the sweep saturated it: requests waited while fewer ran
    than the clients kept in flight."""
    if sweep.max_waiting > 0 and sweep.max_running < sweep.measurements.concurrency.max():
        return sweep.max_running
    return None


def build_profile(sweep: Sweep, fitted: Fit, name: str, gpu: str, max_num_seqs: int | None,
                  max_num_batched_tokens: int) -> ReplicaProfile:
    seen = max_num_seqs_seen(sweep)
    if max_num_seqs is not None:
        seqs_note = "max_num_seqs given"
    elif seen is not None:
        max_num_seqs, seqs_note = seen, "max_num_seqs seen (requests waited)"
    else:
        max_num_seqs, seqs_note = VLLM_DEFAULT_MAX_NUM_SEQS, "max_num_seqs not reached: vLLM's default assumed"
    m = sweep.measurements
    source = (
        f"measured by `vllm-autoscaler profile` on {sweep.started:%Y-%m-%d %H:%M} UTC against "
        f"{sweep.endpoint.url} ({sweep.endpoint.model}): {len(m.sent)} requests at concurrency "
        f"{','.join(str(int(c)) for c in np.unique(m.concurrency))}; {seqs_note}; "
        f"load average {sweep.load_average:.1f}"
    )
    if fitted.coefficients["prefill_per_token_s"] <= 0 or fitted.coefficients["decode_base_s"] <= 0:
        raise ProfilingError(f"the fit gave no positive prefill or base step time: {fitted.coefficients}")
    return ReplicaProfile(
        name=name, model=sweep.endpoint.model, gpu=gpu, source=source, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, kv_cache_tokens=sweep.kv_cache_tokens,
        **fitted.coefficients,
    )  # fmt: skip


# ---- the output -----------------------------------------------------------------------------
def fit_summary(fitted: Fit) -> list[str]:
    ext = fitted.extended
    return [
        f"fit: median relative error TTFT {fitted.ttft_error:.1%}, ITL {fitted.itl_error:.1%}",
        f"not in the profile's model: a step carrying prefill costs {ext['prefill_step_s'] * 1e3:.2f} ms "
        f"more, and TTFT has {ext['ttft_overhead_s'] * 1e3:.2f} ms outside the engine; with them "
        f"the errors would be TTFT {fitted.extended_ttft_error:.1%}, ITL {fitted.extended_itl_error:.1%}",
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
    left.plot(rows.prompt[t][order], predicted[t][order] * 1e3, "r-", label="profile: base + prefill x prompt")
    left.plot(rows.prompt[t][order], fitted.predict(extended=True)[t][order] * 1e3, "k:",
              label="with prefill-step and TTFT overheads")  # fmt: skip
    left.set(xlabel="prompt tokens", ylabel="TTFT (ms)", title="TTFT at low load")
    left.legend(fontsize=8)
    d = ~t
    for c in np.unique(rows.concurrency[d]):
        at = d & (rows.concurrency == c)
        right.scatter(predicted[at] * 1e3, rows.y[at] * 1e3, s=8, alpha=0.5, label=f"concurrency {int(c)}")
    top = max(rows.y[d].max(), predicted[d].max()) * 1e3
    right.plot([0, top], [0, top], "k--", lw=1)
    right.set(xlabel="profile's ITL (ms)", ylabel="measured ITL (ms)", title="Mean inter-token latency per request")
    right.legend(fontsize=8)
    fig.suptitle(f"{title}: fit against measurement")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
