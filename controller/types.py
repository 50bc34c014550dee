"""The few types every part of the product meets at.

A metric source (live or simulated) builds an `Observation`; a `Policy` turns it into a
`Decision`; actuators apply the decision. Nothing here does I/O or reads a clock: time is
always passed in, in seconds on the caller's clock (wall clock live, simulated clock offline).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, runtime_checkable

V = TypeVar("V")
# A latency histogram over the rate window: (upper bound, cumulative count) pairs, +Inf last.
Buckets = tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class Sample(Generic[V]):
    """One measured value (a number, or a histogram's buckets) and when it was measured;
    `value is None` means missing."""

    value: V | None
    at: float

    @staticmethod
    def missing(at: float = -math.inf) -> Sample:
        return Sample(None, at)

    def age(self, now: float) -> float:
        return now - self.at

    def fresh(self, now: float, max_age_s: float) -> V | None:
        """The value if present and no older than `max_age_s`, else None (missing)."""
        if self.value is None or now - self.at > max_age_s:
            return None
        return self.value


MISSING = Sample.missing()


@dataclass(frozen=True, slots=True)
class PoolState:
    """What a pool's control plane says about its capacity (replicas or containers)."""

    ready: int
    starting: int
    desired: int
    at: float = 0.0
    # Modal only: inputs queued at Modal waiting for a container (None when unknown).
    backlog: int | None = None

    @property
    def total(self) -> int:
        return self.ready + self.starting


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything a live controller can know about one target at `time`.

    vLLM aggregates are summed (or averaged) over the replicas reporting, across pools, as a
    PromQL query over the target's series would return them.
    """

    time: float
    kubernetes: PoolState | None = None
    modal: PoolState | None = None
    running: Sample = MISSING  # sum of vllm:num_requests_running
    waiting: Sample = MISSING  # sum of vllm:num_requests_waiting
    kv_usage_mean: Sample = MISSING  # mean of vllm:kv_cache_usage_perc (0..1)
    kv_usage_max: Sample = MISSING
    ttft_p50: Sample = MISSING  # seconds, histogram_quantile over the rate window
    ttft_p95: Sample = MISSING
    ttft_p99: Sample = MISSING
    # The TTFT histogram itself (counts over the window): the share of requests over any
    # threshold, where a quantile only tells which bucket it falls in.
    ttft_buckets: Sample[Buckets] = MISSING
    itl_p50: Sample = MISSING
    itl_p95: Sample = MISSING
    itl_p99: Sample = MISSING
    arrival_rate: Sample = MISSING  # requests/s over the rate window
    # requests/s between the last two scrapes (PromQL's irate): a burst shorter than the
    # rate window, which the window's mean averages away
    arrival_rate_instant: Sample = MISSING
    prompt_tokens_rate: Sample = MISSING  # prompt tokens/s
    output_tokens_rate: Sample = MISSING  # generated tokens/s
    replicas_reporting: Sample = MISSING


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a decision was taken: the signal that drove it, the figures, and one line."""

    driver: str
    summary: str
    details: dict[str, float | int | str | bool | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """Desired capacity per pool; None leaves that pool as it is (or it is not configured)."""

    kubernetes_replicas: int | None
    modal_min_containers: int | None
    modal_buffer_containers: int | None
    reason: Reason


@runtime_checkable
class Policy(Protocol):
    """Pure decision maker: observation and time in, decision out; state lives inside."""

    name: str

    def decide(self, observation: Observation, now: float) -> Decision: ...


@runtime_checkable
class Remembering(Protocol):
    """A policy whose memory (forecast, season, error budget) can be rebuilt from the
    observations of the `memory_seconds` before it started."""

    memory_seconds: float

    def recall(self, history: Sequence[Observation]) -> None: ...


@runtime_checkable
class MetricSource(Protocol):
    """Builds the observation of one target (Prometheus, direct scrape, simulated)."""

    async def collect(self) -> Observation: ...


@runtime_checkable
class HistorySource(Protocol):
    """A metric source that also keeps what it measured before (Prometheus does)."""

    async def history(self, seconds: float, step_s: float) -> list[Observation]: ...


@dataclass(frozen=True, slots=True)
class ActuationResult:
    """What an actuator did with a decision."""

    pool: str  # "kubernetes" | "modal"
    changed: bool
    before: PoolState | None
    after: PoolState | None
    message: str


@runtime_checkable
class Actuator(Protocol):
    """Reads and sets one pool's capacity (Kubernetes scale, Modal warm pool, dry-run)."""

    pool: str

    async def current(self) -> PoolState: ...

    async def apply(self, decision: Decision) -> ActuationResult: ...
