"""Trace replay: requests through a router into simulated pools, a policy called every tick.

One event loop on a simulated clock. The policy is the very object the live daemon runs: it
sees only an `Observation` built the way Prometheus would report it (gauges at the tick,
histogram quantiles and rates over a window) and returns a `Decision`, which simulated
actuators apply to pools that start, bill and drain like the real ones.
"""

from __future__ import annotations

import heapq
import math
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate, count

import numpy as np

from ..config.schema import Config, Target
from ..controller.histogram import ITL_BUCKETS, TTFT_BUCKETS, histogram_quantile
from ..controller.profile import ReplicaProfile
from ..controller.types import Decision, Observation, Policy, Sample
from .native import Replica
from .demand import replicas_needed
from .pools import Pool, Server, SimKubernetesPool, SimModalPool
from .traces import Trace

# After the last arrival, keep running until every request is done or this long has passed.
DRAIN_HORIZON_S = 3600.0


@dataclass
class Timeline:
    """Per-tick records for plots and reports."""

    time: list[float] = field(default_factory=list)
    arrivals: list[int] = field(default_factory=list)
    k8s_ready: list[int] = field(default_factory=list)
    k8s_desired: list[int] = field(default_factory=list)
    modal_ready: list[int] = field(default_factory=list)
    modal_desired: list[int] = field(default_factory=list)
    ttft_p99: list[float] = field(default_factory=list)
    cost_k8s: list[float] = field(default_factory=list)
    cost_modal: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


@dataclass
class SimResult:
    policy: str
    summary: dict[str, float]
    timeline: Timeline
    ttft: np.ndarray  # per request, NaN when it never got a first token
    e2e: np.ndarray


@dataclass
class Scrape:
    """What Prometheus stores from one scrape of every replica: gauges and counters."""

    time: float
    running: float
    waiting: float
    kv_usage: list[float]  # per replica
    arrived: int
    prompt_arrived: int
    tokens_done: int
    ttft_counts: list[float]  # histogram buckets, the last one +Inf
    itl_counts: list[float]


def window_buckets(bounds: tuple[float, ...], latest: list[float], base: list[float]) -> dict:
    """{upper bound: cumulative count} of what a histogram observed between two scrapes."""
    cumulative = accumulate(c - b for c, b in zip(latest, base))
    return dict(zip((*bounds, math.inf), cumulative))


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """As PromQL's histogram_quantile; None when the window observed nothing."""
    value = histogram_quantile(q, buckets)
    return None if math.isnan(value) else value


class Simulation:
    def __init__(
        self,
        trace: Trace,
        config: Config,
        target: Target,
        profile: ReplicaProfile,
        policy: Policy,
        progress: Callable[[float], None] | None = None,
    ):
        self.trace = trace
        self.config = config
        self.target = target
        self.profile = profile
        self.policy = policy
        self.progress = progress
        self.rng = np.random.default_rng(config.simulation.seed)
        # Warm-up: minutes of traffic replayed before t=0 so that pools and policy state
        # (forecasts, stabilisation windows) are in a running state when counting starts.
        self.warmup_s = math.ceil(config.simulation.warmup_seconds / config.tick_seconds) * config.tick_seconds
        self.lead_in = self._lead_in(trace)
        self.warmup_requests = len(self.lead_in)
        lead = self.lead_in
        self.arrival: list[float] = lead.arrival_s.tolist() + trace.arrival_s.tolist()
        self.prompt: list[int] = lead.prompt_tokens.tolist() + trace.prompt_tokens.tolist()
        self.output: list[int] = lead.output_tokens.tolist() + trace.output_tokens.tolist()
        n = len(self.arrival)
        self.first_token_at = [math.nan] * n
        self.finished_at = [math.nan] * n
        self.failed = bytearray(n)
        self.fail_reasons: dict[str, int] = {}
        self.events: list = []
        self.seq = count()  # ties in time run in scheduling order
        self.now = 0.0
        self.timeout = config.simulation.request_timeout_seconds
        # Latency histograms as vLLM exports them: counts per bucket (the last one +Inf),
        # added to at bisect_left(bounds, value) (= bucket_index), in place: this is hot.
        self.ttft_counts = [0.0] * (len(TTFT_BUCKETS) + 1)
        self.itl_counts = [0.0] * (len(ITL_BUCKETS) + 1)
        self.window = config.simulation.metrics_window_seconds
        self.scrape_interval = config.simulation.scrape_interval_seconds
        self.scrapes: deque[Scrape] = deque()  # those a query over the window still needs
        self.ttft_window: dict[float, float] = {}  # the latest tick's TTFT window buckets
        self.arrived = 0  # requests routed so far
        # Prompt tokens of the first i requests, for the prompt-token rate.
        self.prompt_cumsum = np.concatenate(([0], np.cumsum(self.prompt, dtype=np.int64)))
        self.tokens_done = 0
        k8s, modal = target.kubernetes_pool, target.modal_pool
        self.k8s = SimKubernetesPool(self, k8s) if k8s else None
        self.modal = SimModalPool(self, modal) if modal else None
        self.pools: list[Pool] = [p for p in (self.k8s, self.modal) if p is not None]
        self.router = Router(self, config.simulation.spill_waiting)
        self.timeline = Timeline()

    # ---- the clock -----------------------------------------------------------------------
    def schedule(self, when: float, callback, arg) -> None:
        heapq.heappush(self.events, (when, next(self.seq), callback, arg))

    def run(self) -> SimResult:
        started = time.perf_counter()
        if self.warmup_s > 0:
            self._warm_start(-self.warmup_s)
        if self.scrape_interval > 0:
            self._scrape(-self.warmup_s)  # Prometheus was scraping the service before the start
        self._replay()
        # Every policy is billed over the same span: at least the whole trace.
        self.now = max(self.now, self.arrival[-1] if self.arrival else 0.0)
        self._fail_leftovers()
        return self._result(time.perf_counter() - started)

    def _replay(self) -> None:
        """The event loop. At equal times a scrape goes first, then the tick, then events, then
        the arrival."""
        arrival, tick, interval = self.arrival, self.config.tick_seconds, self.scrape_interval
        n = len(arrival)
        next_tick = -self.warmup_s
        # Scrapes fall half an interval off the ticks: the mean age of a scrape that is not
        # synchronised with them.
        next_scrape = next_tick + interval / 2 if interval > 0 else math.inf
        end = (arrival[-1] if n else 0.0) + DRAIN_HORIZON_S
        route, run_events = self.router.route, self._run_events
        i = 0
        while True:
            t_arrival = arrival[i] if i < n else math.inf
            clock = next_scrape if next_scrape <= next_tick else next_tick
            run_events(t_arrival, clock)
            if clock > t_arrival:
                self.now = t_arrival
                route(i, t_arrival)
                i += 1
                self.arrived = i
            elif next_scrape <= next_tick:
                self._scrape(next_scrape)
                next_scrape += interval
            else:  # no event is left before the tick either
                if (i >= n and self.all_done()) or next_tick > end:
                    return
                self.now = next_tick
                self._tick(next_tick)
                next_tick += tick

    def _run_events(self, t_arrival: float, clock: float) -> None:
        """Every event due before the next tick or scrape and no later than the next arrival."""
        events = self.events
        while events:
            when = events[0][0]
            if when >= clock or when > t_arrival:
                return
            _, _, callback, arg = heapq.heappop(events)
            self.now = when
            callback(when, arg)

    def _lead_in(self, trace: Trace) -> Trace:
        """The warm-up traffic, at times in [-warmup_s, 0): the end of what came before the
        trace when it is a slice of a longer one, else a replay of its own first minutes."""
        w = self.warmup_s
        if trace.before is not None and len(trace.before):
            source, shift = trace.before, 0.0
        else:
            source, shift = trace, -w
        times = source.arrival_s + shift
        keep = (times >= -w) & (times < 0)
        return Trace(times[keep], source.prompt_tokens[keep], source.output_tokens[keep])

    def _warm_start(self, now: float) -> None:
        """Start where a running service would be: the primary pool (Kubernetes if there is
        one) sized for the load of the warm-up minutes."""
        lead = self.lead_in
        if len(lead):
            lead = Trace(lead.arrival_s + self.warmup_s, lead.prompt_tokens, lead.output_tokens)
            replicas = int(replicas_needed(lead, self.target, self.profile).max())
            (self.k8s or self.modal).warm_start(replicas, now)

    def all_done(self) -> bool:
        return self.router.idle() and all(s.engine.load == 0 for p in self.pools for s in p.servers)

    # ---- what engines and pools report ---------------------------------------------------
    def first_token(self, req: int, now: float) -> None:
        self.first_token_at[req] = now
        self.ttft_counts[bisect_left(TTFT_BUCKETS, now - self.arrival[req])] += 1.0

    def finished(self, req: int, now: float, replica: Replica) -> None:
        self.finished_at[req] = now
        out = self.output[req]
        self.tokens_done += out
        if out > 1:
            itl = (now - self.first_token_at[req]) / (out - 1)
            self.itl_counts[bisect_left(ITL_BUCKETS, itl)] += out - 1
        if now - self.arrival[req] > self.timeout:
            self.fail(req, now, "client timeout")
        server: Server = replica.owner
        server.pool.request_done(server, now)

    def rejected(self, req: int, now: float, replica: Replica) -> None:
        self.fail(req, now, "prompt larger than the KV cache")
        server: Server = replica.owner
        server.pool.request_done(server, now)

    def fail(self, req: int, now: float, why: str) -> None:
        if not self.failed[req]:
            self.failed[req] = 1
            if req >= self.warmup_requests:
                self.fail_reasons[why] = self.fail_reasons.get(why, 0) + 1

    def timed_out(self, req: int, now: float) -> bool:
        if now - self.arrival[req] > self.timeout:
            self.fail(req, now, "client timeout")
            return True
        return False

    def dispatch(self, req: int, server: Server, now: float) -> None:
        server.engine.enqueue(req, now)

    # ---- ticks: observe, decide, actuate -------------------------------------------------
    def _tick(self, now: float) -> None:
        if now == 0.0:
            for pool in self.pools:
                pool.start_counting(now)
        observation = self.observe(now)
        decision = self.policy.decide(observation, now)
        self.apply(decision, now)
        if now >= 0:
            self._record(now, decision)
        if self.progress:
            self.progress(now)

    # ---- metrics: scrapes, and queries over them ------------------------------------------
    def _scrape(self, now: float) -> None:
        engines = [s.engine for p in self.pools for s in p.servers if s.ready]  # draining too
        self.scrapes.append(Scrape(
            now, float(sum(e.running for e in engines)), float(sum(e.num_waiting for e in engines)),
            [e.kv_used(now) / e.kv_cap for e in engines], self.arrived,
            int(self.prompt_cumsum[self.arrived]), self.tokens_done, list(self.ttft_counts),
            list(self.itl_counts),
        ))  # fmt: skip

    def observe(self, now: float) -> Observation:
        """What a PromQL query at `now` returns: gauges of the latest scrape, and histogram
        quantiles and rates between it and the last scrape at or before the window's start.
        Pool states come from the platforms' APIs, current."""
        if not self.scrape_interval:
            self._scrape(now)
        scrapes = self.scrapes
        while len(scrapes) > 1 and scrapes[1].time <= now - self.window:
            scrapes.popleft()
        base, latest = scrapes[0], scrapes[-1]
        span = latest.time - base.time
        self.ttft_window = window_buckets(TTFT_BUCKETS, latest.ttft_counts, base.ttft_counts)
        itl = window_buckets(ITL_BUCKETS, latest.itl_counts, base.itl_counts)
        kv = latest.kv_usage

        def sample(value: float | None) -> Sample:
            return Sample(value, latest.time)

        def rate(delta: float) -> Sample:
            return sample(delta / span if span > 0 else None)

        return Observation(
            time=now,
            kubernetes=self.k8s.state(now) if self.k8s else None,
            modal=self.modal.state(now) if self.modal else None,
            running=sample(latest.running),
            waiting=sample(latest.waiting),
            kv_usage_mean=sample(sum(kv) / len(kv) if kv else None),
            kv_usage_max=sample(max(kv) if kv else None),
            ttft_p50=sample(quantile(0.5, self.ttft_window)),
            ttft_p95=sample(quantile(0.95, self.ttft_window)),
            ttft_p99=sample(quantile(0.99, self.ttft_window)),
            ttft_buckets=sample(tuple(self.ttft_window.items())),
            itl_p50=sample(quantile(0.5, itl)),
            itl_p95=sample(quantile(0.95, itl)),
            itl_p99=sample(quantile(0.99, itl)),
            arrival_rate=rate(latest.arrived - base.arrived),
            arrival_rate_instant=self._instant_rate(),
            prompt_tokens_rate=rate(latest.prompt_arrived - base.prompt_arrived),
            output_tokens_rate=rate(latest.tokens_done - base.tokens_done),
            replicas_reporting=sample(float(len(kv))),
        )

    def _instant_rate(self) -> Sample:
        """Arrivals per second between the last two scrapes (PromQL's irate)."""
        if len(self.scrapes) < 2:
            return Sample.missing()
        before, latest = self.scrapes[-2], self.scrapes[-1]
        return Sample((latest.arrived - before.arrived) / (latest.time - before.time), latest.time)

    def apply(self, decision: Decision, now: float) -> None:
        if self.k8s and decision.kubernetes_replicas is not None:
            self.k8s.scale(decision.kubernetes_replicas, now)
        if self.modal:
            self.modal.configure(
                decision.modal_min_containers, decision.modal_buffer_containers, now
            )

    def _record(self, now: float, decision: Decision) -> None:
        tl = self.timeline
        k8s = self.k8s.state(now) if self.k8s else None
        modal = self.modal.state(now) if self.modal else None
        tl.time.append(now)
        tl.arrivals.append(self.arrived - self.warmup_requests)
        tl.k8s_ready.append(k8s.ready if k8s else 0)
        tl.k8s_desired.append(k8s.desired if k8s else 0)
        tl.modal_ready.append(modal.ready if modal else 0)
        tl.modal_desired.append(modal.desired if modal else 0)
        p99 = quantile(0.99, self.ttft_window)
        tl.ttft_p99.append(math.nan if p99 is None else p99)
        tl.cost_k8s.append(self.k8s.cost(now) if self.k8s else 0.0)
        tl.cost_modal.append(self.modal.cost(now) if self.modal else 0.0)
        tl.reasons.append(decision.reason.summary)

    # ---- the end -------------------------------------------------------------------------
    def _fail_leftovers(self) -> None:
        for req in np.flatnonzero(np.isnan(self.finished_at)).tolist():
            self.fail(req, self.now, "not served before the end of the simulation")

    def _result(self, wall_s: float) -> SimResult:
        from .summary import summarise

        return summarise(self, wall_s)


class Router:
    """The ready Kubernetes replica that admits soonest first; spill to Modal when Kubernetes
    is full, i.e. when every replica already has requests it has not admitted (waiting).

    With no Modal pool, a full Kubernetes pool still takes the request (it queues in vLLM);
    with no ready capacity at all, requests wait here until some appears or they time out.
    """

    def __init__(self, sim: Simulation, spill_threshold: int):
        self.sim = sim
        self.spill_threshold = spill_threshold
        self.pending: deque[int] = deque()

    def idle(self) -> bool:
        return not self.pending and not (self.sim.modal and self.sim.modal.backlog)

    def route(self, req: int, now: float) -> None:
        sim, k8s = self.sim, self.sim.k8s
        best = self._admits_soonest(k8s) if k8s is not None and k8s.serving else None
        if best is not None and (
            k8s.serving[best].engine.num_waiting < self.spill_threshold or sim.modal is None
        ):
            k8s.send(best, req, now)
        elif sim.modal is not None:
            sim.modal.submit(req, now)
        else:
            self.pending.append(req)

    @staticmethod
    def _admits_soonest(k8s: SimKubernetesPool) -> int:
        """The serving pod (its index) that admits soonest: one with nothing waiting admits at
        its next step, whatever it runs; among those, the one holding the fewest requests;
        first of equals."""
        loads = k8s.in_flight
        best = loads.index(min(loads))
        # The least-loaded pod usually has nothing waiting, and then it is the answer.
        if k8s.serving[best].engine.num_waiting == 0:
            return best
        keys = [(s.engine.num_waiting, load) for s, load in zip(k8s.serving, loads)]
        return keys.index(min(keys))

    def capacity_added(self, now: float) -> None:
        pending, self.pending = self.pending, deque()
        for req in pending:
            if not self.sim.timed_out(req, now):
                self.route(req, now)
