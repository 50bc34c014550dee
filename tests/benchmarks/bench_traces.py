"""Trace speed: loading 1.44 M-row trace files and generating 1-day synthetic traces.

Goals (issue 3): a 1.44 M-row trace loads in a few seconds; a 1-day trace at 1000
requests/minute is generated in well under 2 s. Run: python tests/benchmarks/bench_traces.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from vllm_autoscaler.simulations.generators import GENERATORS
from vllm_autoscaler.simulations.traces import Trace, load_trace, save_trace

DAY = 86400.0
RATE = 1000 / 60  # requests per second


def timed(action):
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def write_azure(trace: Trace, path: Path) -> None:
    """The trace in the Azure 2023 format (7 fractional digits)."""
    start = np.datetime64("2023-11-16T18:17:03.9799600", "ns")
    stamps = np.datetime_as_string(start + (trace.arrival_s * 1e9).astype("timedelta64[ns]"), unit="ns")
    with open(path, "w") as f:
        f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        rows = zip(stamps.tolist(), trace.prompt_tokens.tolist(), trace.output_tokens.tolist())
        f.writelines(f"{s[:10]} {s[11:27]},{p},{o}\n" for s, p, o in rows)


def write_burstgpt(trace: Trace, path: Path) -> None:
    with open(path, "w") as f:
        f.write("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n")
        rows = zip(trace.arrival_s.tolist(), trace.prompt_tokens.tolist(), trace.output_tokens.tolist())
        f.writelines(f"{t:.0f},ChatGPT,{p},{o},{p + o},Conversation log\n" for t, p, o in rows)


def main() -> None:
    print(f"generating 1-day traces at {RATE * 60:g} requests/minute:")
    params = {
        "poisson": {"rate_per_s": RATE, "duration_s": DAY},
        "diurnal": {"mean_rate": RATE, "peak_to_trough": 4, "duration_s": DAY},
        "step": {"rates": [RATE / 2, RATE * 2, RATE / 2, RATE], "step_duration_s": DAY / 4},
        "bursty": {"base_rate_per_s": RATE / 2, "burst_multiplier": 4, "burst_fraction": 1 / 6,
                   "duration_s": DAY},
        "spiky": {"base_rate_per_s": RATE / 2, "peak_rate_per_s": RATE * 3.5, "duration_s": DAY},
    }  # fmt: skip
    for kind, kwargs in params.items():
        trace, seconds = timed(lambda: GENERATORS[kind](seed=1, **kwargs))  # noqa: B023
        print(f"  {kind:>8}: {len(trace):>9,} requests in {seconds:5.2f} s (goal well under 2 s)")

    trace = GENERATORS["poisson"](rate_per_s=RATE, duration_s=DAY, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{name}.csv" for name in ("azure", "burstgpt", "normalised")}
        write_azure(trace, files["azure"])
        write_burstgpt(trace, files["burstgpt"])
        _, saved = timed(lambda: save_trace(trace, files["normalised"]))
        print(f"save_trace: {len(trace):,} rows in {saved:.2f} s")
        print("load_trace (best of 3):")
        for name, path in files.items():
            seconds = min(timed(lambda: load_trace(path))[1] for _ in range(3))  # noqa: B023
            size = path.stat().st_size / 1e6
            print(f"  {name:>10}: {len(trace):,} rows, {size:.0f} MB in {seconds:5.2f} s (goal: a few s)")
        scaled, seconds = timed(lambda: load_trace(files["azure"], rate_scale=1.5, start_s=3600))
        print(f"  azure, sliced and rate x1.5: {len(scaled):,} requests in {seconds:.2f} s")


if __name__ == "__main__":
    main()
