"""Synthetic request traces: seeded (same seed, same trace) and vectorised with numpy.

Arrival processes (rates in requests per second):
- `poisson`: a constant rate.
- `diurnal`: a day cycle, rate = mean * (1 - a cos(2 pi (t - trough_at_s) / period)), a
  non-homogeneous Poisson process drawn by thinning.
- `step`: a piecewise-constant rate.
- `bursty`: a Markov-modulated Poisson process with a base and a burst state; `spiky_daily`
  states it as peak hours per day ("spiky: peak under 4 h/day").

Token lengths are lognormal with the given means by default, or (prompt, output) pairs drawn
from a real trace, which keeps their joint distribution (`tokens=` a Trace or a trace file).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .traces import Trace, load_trace


class TokenSampler(Protocol):
    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class LognormalTokens:
    """Lognormal prompt and output lengths; sigma is that of the log (Azure 2023 conversation
    trace: prompt ~0.5, output ~1.0; code trace: ~0.8, ~1.2)."""

    prompt_mean: float = 1024
    prompt_sigma: float = 0.5
    output_mean: float = 256
    output_sigma: float = 1.0

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return (_lognormal(rng, self.prompt_mean, self.prompt_sigma, n),
                _lognormal(rng, self.output_mean, self.output_sigma, n))  # fmt: skip


def _lognormal(rng: np.random.Generator, mean: float, sigma: float, n: int) -> np.ndarray:
    _check(mean >= 1 and sigma >= 0, f"token mean must be >= 1 and sigma >= 0, got {mean}, {sigma}")
    mu = np.log(mean) - sigma**2 / 2  # so that the lognormal's mean is `mean`
    return np.maximum(np.rint(rng.lognormal(mu, sigma, n)), 1).astype(np.int64)


@dataclass(frozen=True)
class EmpiricalTokens:
    """(prompt, output) pairs drawn with replacement from a real trace."""

    trace: Trace

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        pick = rng.integers(0, len(self.trace), n)
        return self.trace.prompt_tokens[pick], self.trace.output_tokens[pick]


TokensSpec = TokenSampler | Trace | str | Path | dict | None


def token_sampler(spec: TokensSpec) -> TokenSampler:
    """None: default lognormal; a dict: lognormal parameters; a Trace or trace file: empirical."""
    if spec is None:
        return LognormalTokens()
    if isinstance(spec, dict):
        return LognormalTokens(**spec)
    if isinstance(spec, (str, Path)):
        return EmpiricalTokens(load_trace(spec))
    if isinstance(spec, Trace):
        return EmpiricalTokens(spec)
    return spec


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _positive(**values: float) -> None:
    for name, value in values.items():
        _check(value > 0, f"{name} must be > 0, got {value}")


def _piecewise_poisson(rng: np.random.Generator, starts: np.ndarray, rates: np.ndarray,
                       duration_s: float) -> np.ndarray:
    """Sorted Poisson arrivals at rates[i] during [starts[i], starts[i + 1]) (up to duration_s)."""
    lengths = np.diff(starts, append=duration_s)
    segment = np.repeat(np.arange(len(starts)), rng.poisson(rates * lengths))
    arrivals = starts[segment] + rng.random(len(segment)) * lengths[segment]
    arrivals.sort()
    return arrivals


def _trace(rng: np.random.Generator, arrivals: np.ndarray, tokens: TokensSpec, name: str) -> Trace:
    _check(len(arrivals) > 0, f"{name}: the parameters gave no requests")
    prompt, output = token_sampler(tokens).sample(rng, len(arrivals))
    return Trace(arrivals, prompt, output, name=name)


def poisson(rate_per_s: float = 10.0, duration_s: float = 3600.0, *, seed: int = 0,
            tokens: TokensSpec = None) -> Trace:  # fmt: skip
    _positive(rate_per_s=rate_per_s, duration_s=duration_s)
    rng = np.random.default_rng(seed)
    arrivals = _piecewise_poisson(rng, np.array([0.0]), np.array([rate_per_s]), duration_s)
    return _trace(rng, arrivals, tokens, f"poisson-{rate_per_s:g}rps")


def diurnal_rate(t: np.ndarray, mean_rate: float, peak_to_trough: float, period_s: float,
                 trough_at_s: float = 0.0) -> np.ndarray:  # fmt: skip
    """The diurnal generator's rate at times t (requests/s)."""
    depth = (peak_to_trough - 1) / (peak_to_trough + 1)  # (1 + depth) / (1 - depth) = ratio
    return mean_rate * (1 - depth * np.cos(2 * np.pi * (t - trough_at_s) / period_s))


def diurnal(mean_rate: float = 10.0, peak_to_trough: float = 4.0, duration_s: float = 86400.0,
            period_s: float = 86400.0, *, trough_at_s: float = 0.0, seed: int = 0,
            tokens: TokensSpec = None) -> Trace:  # fmt: skip
    """Rate swings between mean*2/(1+r) at trough_at_s and mean*2r/(1+r) half a period later."""
    _positive(mean_rate=mean_rate, duration_s=duration_s, period_s=period_s)
    _check(1 <= peak_to_trough < np.inf,
           f"peak_to_trough must be finite and >= 1, got {peak_to_trough}")  # fmt: skip
    rng = np.random.default_rng(seed)
    peak = mean_rate * 2 * peak_to_trough / (1 + peak_to_trough)
    candidates = _piecewise_poisson(rng, np.array([0.0]), np.array([peak]), duration_s)
    rate = diurnal_rate(candidates, mean_rate, peak_to_trough, period_s, trough_at_s)
    arrivals = candidates[rng.random(len(candidates)) * peak < rate]
    return _trace(rng, arrivals, tokens, f"diurnal-{mean_rate:g}rps-x{peak_to_trough:g}")


def step(rates: Sequence[float] = (5.0, 20.0, 5.0), step_duration_s: float = 600.0, *,
         seed: int = 0, tokens: TokensSpec = None) -> Trace:  # fmt: skip
    """rates[i] requests/s during the i-th step of step_duration_s."""
    rates = np.asarray(rates, dtype=float)
    _check(rates.ndim == 1 and len(rates) > 0 and bool((rates >= 0).all()),
           f"rates must be a non-empty list of rates >= 0, got {rates.tolist()}")
    _positive(step_duration_s=step_duration_s)
    rng = np.random.default_rng(seed)
    starts = np.arange(len(rates)) * float(step_duration_s)
    arrivals = _piecewise_poisson(rng, starts, rates, len(rates) * float(step_duration_s))
    return _trace(rng, arrivals, tokens, "step-" + "-".join(f"{r:g}" for r in rates))


def _alternating_sojourns(rng: np.random.Generator, means: tuple[float, float], first: int,
                          duration_s: float) -> np.ndarray:
    """Start times of exponential sojourns alternating between two states, covering duration_s."""  # fmt: skip
    per_cycle = sum(means)
    cycles = int(duration_s / per_cycle) + 2
    while True:
        scales = np.tile(np.roll(means, -first), cycles)
        ends = np.cumsum(rng.exponential(scales))
        if ends[-1] >= duration_s:
            return np.concatenate(([0.0], ends[ends < duration_s]))
        cycles *= 2


def bursty(base_rate_per_s: float = 5.0, burst_multiplier: float = 10.0, mean_burst_s: float = 600.0,
           burst_fraction: float = 0.1, duration_s: float = 86400.0, *, seed: int = 0,
           tokens: TokensSpec = None) -> Trace:  # fmt: skip
    """MMPP: base rate, or base * burst_multiplier during bursts; bursts last mean_burst_s on
    average (exponential) and take burst_fraction of the time in the long run."""
    _positive(base_rate_per_s=base_rate_per_s, mean_burst_s=mean_burst_s, duration_s=duration_s)
    _check(burst_multiplier >= 1, f"burst_multiplier must be >= 1, got {burst_multiplier}")
    _check(0 < burst_fraction < 1, f"burst_fraction must be in (0, 1), got {burst_fraction}")
    rng = np.random.default_rng(seed)
    mean_base_s = mean_burst_s * (1 - burst_fraction) / burst_fraction
    first = int(rng.random() < burst_fraction)  # start in the stationary state distribution
    starts = _alternating_sojourns(rng, (mean_base_s, mean_burst_s), first, duration_s)
    bursting = (np.arange(len(starts)) + first) % 2 == 1
    rates = base_rate_per_s * np.where(bursting, burst_multiplier, 1.0)
    arrivals = _piecewise_poisson(rng, starts, rates, duration_s)
    return _trace(rng, arrivals, tokens, f"bursty-{base_rate_per_s:g}rps-x{burst_multiplier:g}")


def spiky_daily(base_rate_per_s: float = 2.0, peak_rate_per_s: float = 20.0,
                peak_hours_per_day: float = 3.0, duration_s: float = 86400.0,
                mean_burst_s: float = 1800.0, *, seed: int = 0, tokens: TokensSpec = None) -> Trace:  # fmt: skip
    """Peaks at peak_rate_per_s for peak_hours_per_day on average, base load otherwise."""
    _check(peak_rate_per_s >= base_rate_per_s > 0,
           f"need peak_rate_per_s >= base_rate_per_s > 0, got {peak_rate_per_s}, {base_rate_per_s}")
    return bursty(base_rate_per_s, peak_rate_per_s / base_rate_per_s, mean_burst_s,
                  peak_hours_per_day / 24, duration_s, seed=seed, tokens=tokens)  # fmt: skip


GENERATORS: dict[str, Callable[..., Trace]] = {
    "poisson": poisson,
    "diurnal": diurnal,
    "step": step,
    "bursty": bursty,
    "spiky": spiky_daily,
}
