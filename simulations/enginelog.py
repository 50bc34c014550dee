"""How fast a vLLM engine ran, from its own log of every step (`fidelity --engine-log`).

A machine's speed drifts. On the shared 2-core test machine, with nothing but the engine on
its CPU, the same batch of 8 decoding sequences took 3.5 ms a step in one 12-s stretch and
4.2 ms in the next; and where requests queue (a burst), every percent of engine speed moves
TTFT by about three. A replay measured against a profile fitted minutes earlier carries that
drift on top of the simulator's own error. vLLM started with
`--enable-logging-iteration-details` logs every step, e.g.

    ... Engine 000: Iteration(45031): 1 context requests, 397 context tokens, 0 generation
    requests, 0 generation tokens, iteration elapsed time: 44.55 ms, CPU KV cache usage: 6.3%

(one line; "elapsed" is the model's execution, without the scheduler around it). `speed` fits

    elapsed = a + b * decoding sequences + c * KV-cache usage + d * prompt tokens

on the steps logged before the replay (the sweep the profile was fitted on) and says, window
by window of the replay, how much longer its steps took than that fit gives for them: the
factor to scale the profile's step times by (`Replica.set_speed`) to simulate the replay at
the speed the server actually had.

Times: vLLM's default log format stamps lines to the second ("11-23 17:40:49", local time);
`LOGGING_CONFIG` (vLLM's VLLM_LOGGING_CONFIG_PATH) stamps them with epoch seconds to 0.1 ms.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

# A logging config for vLLM (a JSON file named by VLLM_LOGGING_CONFIG_PATH): lines start with
# the epoch time of the record.
LOGGING_CONFIG = {
    "version": 1, "disable_existing_loggers": False,
    "formatters": {"epoch": {"format": "%(created).4f %(levelname)s %(message)s"}},
    "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "epoch", "stream": "ext://sys.stdout"}},
    "loggers": {"vllm": {"handlers": ["out"], "level": "INFO", "propagate": False}},
}  # fmt: skip
STEP = re.compile(
    r"Iteration\(\d+\): (\d+) context requests, (\d+) context tokens, (\d+) generation requests, "
    r"\d+ generation tokens, iteration elapsed time: ([\d.]+) ms.*?KV cache usage: ([\d.]+)%"
)
EPOCH = re.compile(r"^(\d{9,}\.\d+) ")
DEFAULT_STAMP = re.compile(r" (\d\d-\d\d \d\d:\d\d:\d\d)[ ,.]")
WINDOW_S = 5.0
MIN_WINDOW_WORK_S = 0.5  # steps worth this much model time in a window, else the replay's factor
MIN_REFERENCE_STEPS = 200


class EngineLogError(ValueError):
    """A log that cannot say how fast the engine ran; the message says why."""


@dataclass(frozen=True)
class Steps:
    """Engine steps as logged: wall-clock time (s), prompt tokens, decoding sequences, KV-cache
    usage (%) and the model's execution time (s)."""

    time: np.ndarray
    prompt_tokens: np.ndarray
    decoding: np.ndarray
    kv_usage: np.ndarray
    elapsed_s: np.ndarray

    @classmethod
    def parse(cls, lines: Iterable[str], year: int | None = None) -> Steps:
        year = year or time.localtime().tm_year
        rows = []
        for line in lines:
            step = STEP.search(line)
            if step is None:
                continue
            stamp = EPOCH.match(line)
            if stamp is not None:
                when = float(stamp.group(1))
            else:
                default = DEFAULT_STAMP.search(line)
                when = (datetime.strptime(f"{year}-{default.group(1)}", "%Y-%m-%d %H:%M:%S").timestamp()
                        if default else float("nan"))  # fmt: skip
            prompt, decoding = int(step.group(2)), int(step.group(3))
            rows.append((when, prompt, decoding, float(step.group(5)), float(step.group(4)) / 1e3))
        table = np.array(rows, dtype=float).reshape(-1, 5)
        return cls(*table.T)

    def __len__(self) -> int:
        return len(self.time)

    def where(self, chosen: np.ndarray) -> Steps:
        return Steps(*(a[chosen] for a in (self.time, self.prompt_tokens, self.decoding, self.kv_usage,
                                           self.elapsed_s)))  # fmt: skip

    def design(self) -> np.ndarray:
        return np.column_stack([np.ones(len(self)), self.decoding, self.kv_usage, self.prompt_tokens])


@dataclass(frozen=True)
class Speed:
    """How much longer than before the engine's steps took during a replay: per window (start,
    seconds into the replay; factor), and over the whole replay."""

    windows: list[tuple[float, float]]
    overall: float
    reference_steps: int
    replay_steps: int

    def summary(self) -> dict:
        factors = [f for _, f in self.windows]
        return {"overall": self.overall, "min": min(factors, default=self.overall),
                "max": max(factors, default=self.overall), "window_s": WINDOW_S,
                "windows": self.windows, "reference_steps": self.reference_steps,
                "replay_steps": self.replay_steps}  # fmt: skip


def speed(reference: Steps, replay: Steps, zero: float, duration_s: float) -> Speed:
    """The replay's steps (those from wall-clock `zero` on, for `duration_s`) against a fit of
    the `reference` steps."""
    if len(reference) < MIN_REFERENCE_STEPS:
        raise EngineLogError(
            f"{len(reference)} engine steps logged before the replay, need {MIN_REFERENCE_STEPS}: "
            "profile the server (with --enable-logging-iteration-details) before the replay"
        )
    coefficients = np.linalg.lstsq(reference.design(), reference.elapsed_s, rcond=None)[0]
    during = replay.where((replay.time >= zero) & (replay.time < zero + duration_s))
    if len(during) == 0:
        raise EngineLogError("no engine step logged during the replay (is iteration logging on?)")
    expected = during.design() @ coefficients
    overall = float(during.elapsed_s.sum() / expected.sum())
    windows = []
    for start in np.arange(0.0, duration_s, WINDOW_S):
        inside = (during.time >= zero + start) & (during.time < zero + start + WINDOW_S)
        work = expected[inside].sum()
        factor = during.elapsed_s[inside].sum() / work if work >= MIN_WINDOW_WORK_S else overall
        windows.append((float(start), float(factor)))
    return Speed(windows, overall, len(reference), len(during))
