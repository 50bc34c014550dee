"""How close the simulator is to a real server (`vllm-autoscaler fidelity`).

A slice of a trace is replayed in real time against a live vLLM endpoint, and through the
simulator (one static replica with the given profile, no autoscaling) with the very arrival
times at which the client sent each request. An optional burst multiplies the request rate
over a stretch so that requests queue: the report splits every figure into the normal and the
overloaded stretch, by arrival. The overloaded stretch runs from the burst's start until the
queues of the live server and of the simulator have all drained after it: in each, the first
arrival after the burst at which every request sent before it had its first token
(`drained_at`); those arriving in between wait for the burst's backlog in one of them at least.
So the normal stretch compares requests that did not queue with requests that did not queue.

With the server's log of its steps (`engine_log`: vLLM with
`--enable-logging-iteration-details`), the report also gives the figures of the simulator run
at the speed the server had during the replay, window by window, against the steps it logged
before (enginelog.py): a shared machine's speed drifts by several percent within minutes, and
an overload magnifies that about threefold. Both are reported; the first is the simulator's
error as a user meets it (a profile fitted on another sweep), the second its error net of the
machine's drift.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config.schema import Config
from ..controller.profile import load_profile
from .enginelog import EngineLogError, Speed, Steps, speed
from .loadgen import LoadClient, discover, first_token_held_back, fit_lengths, session
from .run import build_policy, parse_policy_spec, pick_target
from .simulator import Simulation
from .traces import Trace, scale_rate, slice_trace

METRICS = ("ttft_p50", "ttft_p95", "e2e_p50", "e2e_p95", "throughput")


@dataclass(frozen=True)
class Burst:
    """Multiply the request rate by `factor` for arrivals in [start_s, end_s) of the slice."""

    start_s: float
    end_s: float
    factor: float

    @classmethod
    def parse(cls, text: str) -> Burst:
        try:
            start, end, factor = (float(v) for v in text.split(":"))
        except ValueError:
            raise ValueError(f"burst {text!r}: expected START:END:FACTOR, e.g. 60:90:3") from None
        if not (0 <= start < end and factor > 0):
            raise ValueError(f"burst {text!r}: need 0 <= START < END and FACTOR > 0")
        return cls(start, end, factor)

    def apply(self, trace: Trace, seed: int) -> Trace:
        if self.start_s >= trace.duration_s:
            raise ValueError(f"burst starts at {self.start_s:g} s, after the slice's last request")
        parts = []
        for start, end, factor in ((0.0, self.start_s, 1.0), (self.start_s, self.end_s, self.factor),
                                   (self.end_s, None, 1.0)):  # fmt: skip
            inside = trace.arrival_s >= start
            if end is not None:
                inside &= trace.arrival_s < end
            if inside.any():
                part = slice_trace(trace, start, end)
                if factor != 1:
                    part = scale_rate(part, factor, seed)
                parts.append((part.arrival_s + start, part.prompt_tokens, part.output_tokens))
        arrival, prompt, output = (np.concatenate(c) for c in zip(*parts))
        return Trace(arrival, prompt, output, name=trace.name)

    def covers(self, arrival_s: np.ndarray, until_s: float | None = None) -> np.ndarray:
        """Arrivals in the burst, or from its start to `until_s` (when its backlog drained)."""
        return (arrival_s >= self.start_s) & (arrival_s < (self.end_s if until_s is None else until_s))


@dataclass(frozen=True)
class Run:
    """Per request, seconds from the replay's start: arrival (as sent), first token, end."""

    arrival: np.ndarray
    first: np.ndarray  # NaN: failed
    end: np.ndarray
    output: np.ndarray


async def replay_live(url: str, trace: Trace, model: str | None,
                      seed: int) -> tuple[Trace, Run, dict[str, int], float]:
    """Replay `trace` (lengths fitted to the model's context) against the server; returns the
    trace as replayed, what happened, how many requests failed for each reason, and the
    wall-clock time (time.time()) of the replay's second 0."""
    async with session() as client:
        endpoint = await discover(client, url, model)
        prompt, output = fit_lengths(trace.prompt_tokens, trace.output_tokens, endpoint.max_model_len)
        trace = Trace(trace.arrival_s, prompt, output, name=trace.name)
        load = LoadClient(client, endpoint, seed)
        await load.complete(16, 2)  # the first request to a fresh server is slow
        wall = time.time() - time.perf_counter()
        outcomes = await load.replay(trace)
    zero = min(o.sent for o in outcomes) - float(trace.arrival_s[0])
    failed = np.array([o.error is not None for o in outcomes])
    reasons = Counter(o.error for o in outcomes if o.error is not None)
    first = np.array([o.first for o in outcomes]) - zero
    end = np.array([o.end for o in outcomes]) - zero
    first[failed], end[failed] = np.nan, np.nan
    sent = np.array([o.sent for o in outcomes]) - zero
    return trace, Run(sent, first, end, output), dict(reasons), wall + zero


def single_replica_config(profile_path: Path, seed: int) -> Config:
    return Config.model_validate({
        "tick_seconds": 1,
        "targets": [{
            "name": "fidelity", "profile": str(profile_path), "modal": None,
            "kubernetes": {"min_replicas": 1, "max_replicas": 1,
                           "startup_seconds": {"low": 0, "mode": 0, "high": 0}},
            "policy": {"static": {"kubernetes_replicas": 1}},
        }],
        "simulation": {"seed": seed, "warmup_seconds": 0, "request_timeout_seconds": 3600},
    })  # fmt: skip


def simulate_run(live: Run, trace: Trace, profile_path: Path, seed: int, speed: Speed | None = None) -> Run:
    """The replay through the simulator, requests arriving when the client sent them; with
    `speed`, every window's steps scaled by the server's measured speed then."""
    order = np.argsort(live.arrival, kind="stable")
    sent = Trace(live.arrival[order], trace.prompt_tokens[order], trace.output_tokens[order])
    # run.simulate, with a hand on the simulation to change the engine's speed.
    _, name, config = parse_policy_spec("static", single_replica_config(profile_path, seed))
    target = pick_target(config, None)
    profile = load_profile(target.profile)
    sim = Simulation(sent, config, target, profile, build_policy(name, config, target, profile, sent))
    if speed is not None:
        def set_speed(now: float, factor: float) -> None:
            for pool in sim.pools:
                for server in pool.servers:
                    server.engine.set_speed(now, factor)

        for start, factor in speed.windows:
            sim.schedule(start, set_speed, factor)
    result = sim.run()
    first, end = np.empty(len(order)), np.empty(len(order))
    first[order] = sent.arrival_s + result.ttft
    end[order] = sent.arrival_s + result.e2e
    return Run(live.arrival, first, end, live.output)


def figures(run: Run, chosen: np.ndarray) -> dict[str, float]:
    ok = chosen & ~np.isnan(run.end)
    ttft, e2e = (run.first - run.arrival)[ok], (run.end - run.arrival)[ok]
    span = run.end[ok].max() - run.arrival[chosen].min()
    return {
        "requests": int(chosen.sum()), "completed": int(ok.sum()),
        "ttft_p50": float(np.percentile(ttft, 50)), "ttft_p95": float(np.percentile(ttft, 95)),
        "e2e_p50": float(np.percentile(e2e, 50)), "e2e_p95": float(np.percentile(e2e, 95)),
        "throughput": float(run.output[ok].sum() / span),  # output tokens per second
    }  # fmt: skip


def drained_at(run: Run, after_s: float) -> float:
    """The first arrival from `after_s` on at which no request sent before it is still waiting
    for its first token in `run` (failed ones aside): the queue has drained. inf if none."""
    order = np.argsort(run.arrival, kind="stable")
    arrival = run.arrival[order]
    first = np.nan_to_num(run.first[order], nan=-np.inf)
    # The latest first token of the requests sent before each one.
    before = np.concatenate(([-np.inf], np.maximum.accumulate(first)[:-1]))
    drained = np.flatnonzero((arrival >= after_s) & (before <= arrival))
    return float(arrival[drained[0]]) if len(drained) else float("inf")


def overloaded_until(runs: list[Run], burst: Burst) -> float:
    """Where the overloaded stretch ends: when every run's queue drained after the burst."""
    return max(burst.end_s, *(drained_at(run, burst.end_s) for run in runs))


def compare(live: Run, simulated: Run, overloaded: np.ndarray | None) -> dict[str, dict]:
    """Per stretch (all; normal and overloaded, given the overloaded requests): live and
    simulated figures, relative errors."""
    stretches = {"all": np.ones(len(live.arrival), bool)}
    if overloaded is not None:
        stretches |= {"normal": ~overloaded, "overloaded": overloaded}
    report = {}
    for name, chosen in stretches.items():
        if not chosen.any():
            continue
        real, sim = figures(live, chosen), figures(simulated, chosen)
        error = {k: sim[k] / real[k] - 1 for k in METRICS}
        report[name] = {"live": real, "simulated": sim, "relative_error": error}
    return report


@dataclass(frozen=True)
class FidelityOptions:
    profile: Path
    burst: Burst | None = None
    model: str | None = None
    seed: int = 0
    engine_log: Path | None = None  # the server's log of its steps (see the module's doc)


def run_fidelity(url: str, trace: Trace, options: FidelityOptions, out: Path) -> dict:
    load_profile(str(options.profile))  # a bad profile fails before the replay, not after
    if options.burst is not None:
        trace = options.burst.apply(trace, options.seed)
    if options.engine_log is not None and not options.engine_log.is_file():
        raise EngineLogError(f"engine log {options.engine_log}: no such file")
    before = options.engine_log.stat().st_size if options.engine_log else 0  # steps logged so far
    replayed, live, failures, zero = asyncio.run(replay_live(url, trace, options.model, options.seed))
    simulated = simulate_run(live, replayed, options.profile, options.seed)
    measured, at_speed, unmeasured = None, None, None
    if options.engine_log is not None:
        try:
            measured = engine_speed(options.engine_log, before, zero, float(np.nanmax(live.end)))
            at_speed = simulate_run(live, replayed, options.profile, options.seed, measured)
        except EngineLogError as exc:  # the replay's figures stand without it
            unmeasured = f"{options.engine_log}: {exc}"
    until = overloaded = None
    if options.burst is not None:
        runs = [run for run in (live, simulated, at_speed) if run is not None]
        until = overloaded_until(runs, options.burst)
        overloaded = options.burst.covers(live.arrival, until)
    lateness = live.arrival - replayed.arrival_s
    held_back = first_token_held_back(live.arrival, live.first, live.end, live.output)
    report = {
        "endpoint": url, "profile": str(options.profile), "trace": trace.name,
        "requests": len(replayed), "failed_live": sum(failures.values()),
        "failures_live": failures,
        "burst": None if options.burst is None else vars(options.burst),
        "overloaded_until_s": until,
        "send_lateness_p95_s": float(np.percentile(lateness, 95)),
        "first_token_held_back_live": float(held_back.mean()),
        "load_average": os.getloadavg()[0],
        "stretches": compare(live, simulated, overloaded),
    }  # fmt: skip
    if measured is not None and at_speed is not None:
        report["at_measured_speed"] = {"speed": measured.summary(),
                                       "stretches": compare(live, at_speed, overloaded)}  # fmt: skip
    elif unmeasured is not None:
        report["at_measured_speed"] = {"error": unmeasured}
    write_report(report, live, simulated, options.burst, out)
    save_runs(replayed, live, simulated, out / "fidelity-requests.csv", at_speed)
    return report


def engine_speed(log: Path, replay_from: int, zero: float, duration_s: float) -> Speed:
    """The server's speed during the replay from its log: the steps logged before byte
    `replay_from` are the reference, those from wall-clock `zero` on the replay's."""
    with log.open("rb") as f:
        earlier = f.read(replay_from).decode(errors="replace").splitlines()
        later = f.read().decode(errors="replace").splitlines()
    return speed(Steps.parse(earlier), Steps.parse(later), zero, duration_s)


def save_runs(trace: Trace, live: Run, simulated: Run, path: Path, at_speed: Run | None = None) -> None:
    """Per request: as replayed, what the server did and what the simulator did (seconds);
    and at the server's measured speed, if known."""
    columns = {
        "arrival_s": live.arrival, "prompt_tokens": trace.prompt_tokens, "output_tokens": trace.output_tokens,
        "live_first_s": live.first, "live_end_s": live.end, "sim_first_s": simulated.first, "sim_end_s": simulated.end,
    }  # fmt: skip
    if at_speed is not None:
        columns |= {"speed_sim_first_s": at_speed.first, "speed_sim_end_s": at_speed.end}
    np.savetxt(path, np.column_stack(list(columns.values())), delimiter=",", fmt="%.6f",
               header=",".join(columns), comments="")  # fmt: skip


def error_table(stretches: dict) -> list[str]:
    """Markdown rows: each stretch's figures live and simulated, and the relative error."""
    rows = ["| stretch | figure | live | simulated | error |", "|---|---|---:|---:|---:|"]
    for stretch, r in stretches.items():
        for k in METRICS:
            unit = "tok/s" if k == "throughput" else "s"
            rows.append(f"| {stretch} | {k} ({unit}) | {r['live'][k]:.3f} | {r['simulated'][k]:.3f} | "
                        f"{r['relative_error'][k]:+.1%} |")  # fmt: skip
    return rows


def write_report(report: dict, live: Run, simulated: Run, burst: Burst | None, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# Simulator fidelity", "",
        f"{report['requests']} requests of {report['trace']} replayed against {report['endpoint']} "
        f"and simulated with {report['profile']} (one static replica). Failed live: "
        f"{report['failed_live']}; client send lateness p95 {report['send_lateness_p95_s'] * 1e3:.1f} ms; "
        f"first token held back to the end by the server: {report['first_token_held_back_live']:.0%} of "
        f"requests; load average {report['load_average']:.1f}.", "",
    ]  # fmt: skip
    if report["failures_live"]:
        lines += ["Failed live, by reason: " + "; ".join(
            f"{n} × {why}" for why, n in report["failures_live"].items()), ""]
    if report.get("overloaded_until_s") is not None:
        b = report["burst"]
        lines += [f"Burst: x{b['factor']:g} from {b['start_s']:g} s to {b['end_s']:g} s; overloaded stretch: "
                  f"arrivals from {b['start_s']:g} s until the queues drained, live and simulated, "
                  f"{report['overloaded_until_s']:.1f} s.", ""]  # fmt: skip
    lines += error_table(report["stretches"])
    if "error" in report.get("at_measured_speed", {}):
        lines += ["", f"The server's speed during the replay is unknown: {report['at_measured_speed']['error']}"]
    elif "at_measured_speed" in report:
        at = report["at_measured_speed"]
        sp = at["speed"]
        lines += [
            "", f"At the speed the server had during the replay (its steps' time against the steps it "
            f"logged before, per {sp['window_s']:g}-s window: x{sp['min']:.3f} to x{sp['max']:.3f}, "
            f"x{sp['overall']:.3f} overall):", "",
        ]  # fmt: skip
        lines += error_table(at["stretches"])
    lines += ["", "![fidelity](fidelity.png)", ""]
    (out / "fidelity.md").write_text("\n".join(lines))
    plot(live, simulated, burst, report.get("overloaded_until_s"), out / "fidelity.png")


def plot(live: Run, simulated: Run, burst: Burst | None, until_s: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for run, label, style in ((live, "live", "o"), (simulated, "simulated", "x")):
        top.plot(run.arrival, run.first - run.arrival, style, ms=3, alpha=0.6, label=label)
        bottom.plot(run.arrival, run.end - run.arrival, style, ms=3, alpha=0.6, label=label)
    for ax in (top, bottom):
        if burst is not None:
            ax.axvspan(burst.start_s, burst.end_s, color="orange", alpha=0.15, label="burst")
            if until_s is not None and until_s > burst.end_s:
                end = min(until_s, float(np.max(live.arrival)))
                ax.axvspan(burst.end_s, end, color="orange", alpha=0.06, label="its backlog (overloaded)")
        ax.set_yscale("log")
    top.set(ylabel="TTFT (s)", title="Per request, by arrival: live server against the simulator")
    bottom.set(ylabel="E2E latency (s)", xlabel="arrival (s into the replay)")
    top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
