"""The long-running controller (`vllm-autoscaler run`): every tick, for every target,
observe -> decide -> actuate.

The only place besides the CLI that wires metric sources, policies and actuators together.
One asyncio loop: ticks every `tick_seconds` (an overrun is logged and the missed ticks are
skipped, never stacked); all targets in the same tick; a Lease elector beside it decides
whether this replica actuates or only observes; an HTTP port serves /healthz, /readyz and
/metrics and changes nothing. It never actuates blind: a target whose metrics or pool states
cannot be read this tick is skipped, and a tick whose metrics are degraded (values rejected,
series absent, a replica not answering) may scale up but not down. Ticks are paced by the
monotonic clock, and policies see a steady clock that a wall-clock step does not move; a call
to a control plane takes about a tick at most. SIGHUP or a change of the config file reloads
the config (an invalid or deleted one is rejected and the running one stays); SIGTERM ends the
current tick without cutting an actuation in half, releases the Lease and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aiohttp import web
from kubernetes.client import ApiClient

from ..actuators.errors import ActuatorError
from ..actuators.kubernetes import (
    KubernetesActuator,
    RetryPolicy,
    kubernetes_api_client,
)
from ..actuators.lease import LeaseElector
from ..actuators.modal import ModalActuator
from ..config.loader import ConfigError, load_config
from ..config.schema import Config, Target
from ..metrics.common import MetricsUnavailable
from ..metrics.prometheus import MAX_POINTS_PER_QUERY, PrometheusMetrics
from ..metrics.scrape import ScrapeMetrics
from .logs import configure_logging
from .policies import make_policy
from .profile import ProfileError, load_profile
from .telemetry import Telemetry
from .types import (
    ActuationResult,
    Actuator,
    Decision,
    HistorySource,
    MetricSource,
    Observation,
    Policy,
    Remembering,
    Sample,
)

log = structlog.get_logger("vllm_autoscaler.daemon")

POLICY = "controller"
# On SIGTERM an actuation under way may finish within this; the rest of the 5 s budget is for
# releasing the Lease and closing clients.
ACTUATION_GRACE_S = 2.5
RELEASE_TIMEOUT_S = 1.5
CONFIG_POLL_S = 1.0
# /healthz fails when no tick has started for this many tick periods (a wedged loop).
LIVENESS_TICKS = 4
LIVENESS_MIN_S = 60.0
# Longest a control plane call may take (less when ticks are shorter: see _build).
KUBERNETES_TIMEOUT_S = 5.0
MODAL_TIMEOUT_S = 30.0
MIN_CALL_BUDGET_S = 2.0


class Clock:
    """The daemon's time. `monotonic()` paces ticks; `now()` is the time handed to policies
    and metric sources: the wall clock read once, at start, then moved by the monotonic clock
    only, so that a step of the wall clock (NTP, an operator, a resumed VM) moves neither tick
    deadlines nor the policy's windows and forecasts. `wait` returns when `event` is set or
    after `timeout` seconds. (A benchmark replaces it to skip the waits.)"""

    def __init__(self) -> None:
        self._offset = time.time() - time.monotonic()

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> float:
        return self._offset + self.monotonic()

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()


class ListenError(RuntimeError):
    """The HTTP port cannot be opened."""


# What a daemon cannot start with: the message says what to fix.
StartupError = (ConfigError, ProfileError, ActuatorError, ValueError, ListenError)


@dataclass(eq=False)  # compared by identity
class TargetRuntime:
    """One target's policy (with its state), metric source and actuators."""

    target: Target
    policy: Policy
    source: MetricSource
    actuators: list[Actuator]
    answered: set[str] = field(default_factory=set)  # "metrics" and pools, once they answered
    measured_at: float | None = None  # newest vLLM measurement seen
    recalled: bool = False  # the policy was offered the source's history

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def has_answered(self) -> bool:
        return self.answered >= {"metrics", *self.target.pools}

    async def aclose(self) -> None:
        for part in (self.source, *self.actuators):
            if hasattr(part, "aclose"):
                await part.aclose()
            elif hasattr(part, "close"):
                part.close()


@dataclass(frozen=True)
class Outcome:
    """What one tick did for one target: the decision record's content."""

    observation: Observation | None = None
    decision: Decision | None = None
    applied: dict[str, str] = field(default_factory=dict)  # pool -> what the actuator did


class Daemon:
    def __init__(self, config: Config, *, config_path: Path | None = None,
                 overrides: Sequence[str] = (), dry_run: bool = False,
                 kubeconfig: str | None = None, host: str = "0.0.0.0", port: int = 8080,
                 identity: str | None = None, clock: Clock | None = None) -> None:
        """Builds every target's parts; raises one of StartupError when it cannot."""
        self.config = config
        self.clock = clock or Clock()
        self.telemetry = Telemetry()
        self.port = port
        self._config_path, self._overrides = config_path, list(overrides)
        self._config_digest = _digest(config_path)
        self._dry_run, self._kubeconfig, self._host = dry_run, kubeconfig, host
        self._kube_api: ApiClient | None = None
        self._targets = [self._build(config, target) for target in config.targets]
        # A dry run writes nothing, the Lease included: it shows what it would do, always.
        election = config.leader_election
        self._elector = None if dry_run or not election.enabled else LeaseElector(
            election, self._kube(), identity or _identity())
        self._stop_event = asyncio.Event()
        self._reload_requested = False
        self._wake = asyncio.Event()  # set to cut a sleep short: stop or reload
        self._actuating = False
        self._ready = False
        self._last_tick_at = self.clock.monotonic()
        self._runner: web.AppRunner | None = None
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        await self._serve_http()
        loop = asyncio.get_running_loop()
        handlers = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop,
                    signal.SIGHUP: self.request_reload}
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        background = [asyncio.create_task(self._elect()), asyncio.create_task(self._watch_config())]
        log.info("daemon.started", targets=[t.name for t in self._targets], port=self.port,
                 dry_run=self._dry_run, tick_seconds=self.config.tick_seconds,
                 identity=self._elector.identity if self._elector else None)
        try:
            await self._tick_loop()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.aclose()
            for sig in handlers:
                loop.remove_signal_handler(sig)
        return 0

    def stop(self) -> None:
        log.info("daemon.stopping")
        self._stop_event.set()
        self._wake.set()

    @property
    def _stopping(self) -> bool:
        return self._stop_event.is_set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    async def aclose(self) -> None:
        """Release the Lease, close every client, stop serving HTTP (once)."""
        if self._closed:
            return
        self._closed = True
        if self._elector is not None:
            try:
                async with asyncio.timeout(RELEASE_TIMEOUT_S):
                    await self._elector.release()
            except (ActuatorError, TimeoutError) as exc:
                log.warning("lease.not_released", error=str(exc) or "timed out")
        for runtime in self._targets:
            await runtime.aclose()
        if self._kube_api is not None:
            await asyncio.to_thread(self._kube_api.close)
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("daemon.stopped")

    # --- ticks -------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        next_tick = self.clock.monotonic()
        while not self._stopping:
            started = self._last_tick_at = self.clock.monotonic()
            if not await self._run_tick():
                return
            elapsed = self.clock.monotonic() - started
            self.telemetry.tick_duration.observe(elapsed)
            tick_s = self.config.tick_seconds
            next_tick += tick_s
            if self.clock.monotonic() > next_tick:  # overran: start on the next tick boundary
                log.warning("tick.overrun", duration_s=round(elapsed, 3), tick_seconds=tick_s)
                self.telemetry.tick_overruns.inc()
                next_tick = started + math.ceil(elapsed / tick_s) * tick_s
            await self._sleep_until(next_tick)

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until the deadline, reloading the config when asked; return early on stop."""
        while not self._stopping:
            self._wake.clear()
            if self._reload_requested:
                self._reload()
                continue
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return
            await self.clock.wait(self._wake, remaining)

    async def _run_tick(self) -> bool:
        """One tick; on stop, abandon it unless it is actuating (then give it a grace).
        False when the daemon is stopping."""
        tick = asyncio.create_task(self.tick())
        stopped = asyncio.create_task(self._stop_event.wait())
        await asyncio.wait({tick, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not tick.done() and self._actuating:
            await asyncio.wait({tick}, timeout=ACTUATION_GRACE_S)
            if not tick.done():
                log.warning("shutdown.actuation_abandoned", grace_s=ACTUATION_GRACE_S)
        if not tick.done():
            tick.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick
        return not self._stopping

    async def tick(self) -> dict[str, Outcome]:
        """Observe and decide for every target, then (as leader) actuate; one decision
        record per target."""
        targets = list(self._targets)
        outcomes = await asyncio.gather(*(self._observe_and_decide(t) for t in targets))
        leader = self.is_leader
        self.telemetry.leader.set(leader)
        if not self._stopping:  # a stop before actuation: nothing is started
            self._actuating = True
            try:
                outcomes = await asyncio.gather(*(
                    self._actuate(t, o, leader) for t, o in zip(targets, outcomes, strict=True)))
            finally:
                self._actuating = False
        for runtime, outcome in zip(targets, outcomes, strict=True):
            if outcome.decision is not None:
                _log_decision(runtime.name, outcome, leader, self._dry_run)
        self._ready = self._ready or all(t.has_answered for t in targets)
        return {t.name: o for t, o in zip(targets, outcomes, strict=True)}

    @property
    def is_leader(self) -> bool:
        return self._elector is None or self._elector.is_leader

    async def _observe_and_decide(self, runtime: TargetRuntime) -> Outcome:
        if not runtime.recalled:
            await self._recall(runtime)
        observation = await self._observe(runtime)
        now = self.clock.now()
        if runtime.measured_at is not None:
            self.telemetry.metrics_age.labels(runtime.name).set(now - runtime.measured_at)
        if observation is None:
            return Outcome()
        try:
            decision = runtime.policy.decide(observation, now)
        except Exception:  # a bug in one target's policy must not stop the others
            log.exception("policy.failed", target=runtime.name)
            self.telemetry.error("internal")
            return Outcome(observation)
        problems = getattr(runtime.source, "problems", None)
        if problems:  # values left out or rejected: what was read may understate the load
            self.telemetry.error("metrics")
            log.error("metrics.degraded", target=runtime.name, problems=problems,
                      action="deciding on what was read, without scaling down")
            decision = _no_scale_down(decision, observation)
        self.telemetry.observed(runtime.name, observation)
        self.telemetry.decided(runtime.name, decision)
        return Outcome(observation, decision)

    async def _recall(self, runtime: TargetRuntime) -> None:
        """Before a target's first decision, rebuild its policy's memory from the metrics the
        source kept, so that a restart (a deploy, a crash) does not forget the day's pattern
        and the spent error budget. Tried once: without it the policy starts afresh."""
        runtime.recalled = True
        policy, source = runtime.policy, runtime.source
        if not (isinstance(policy, Remembering) and isinstance(source, HistorySource)):
            return
        try:
            # One point per tick, but no more than one range query holds: a day of 1-s ticks
            # would be 90,000 points and a first tick kept waiting.
            step = max(self.config.tick_seconds, policy.memory_seconds / MAX_POINTS_PER_QUERY)
            history = await source.history(policy.memory_seconds, step)
            policy.recall(history)
        except MetricsUnavailable as exc:
            log.warning("history.unavailable", target=runtime.name, error=str(exc),
                        action="starting without memory")
            return
        except Exception:  # a bug here must not stop the target from deciding
            log.exception("history.failed", target=runtime.name, action="starting without memory")
            self.telemetry.error("internal")
            return
        log.info("history.recalled", target=runtime.name, observations=len(history),
                 seconds=round(self.clock.now() - history[0].time) if history else 0)

    async def _observe(self, runtime: TargetRuntime) -> Observation | None:
        """The target's metrics merged with its pool states; None (logged and counted) when
        any of them cannot be read: acting on a partial view would be acting blind."""
        parts = ["metrics", *(a.pool for a in runtime.actuators)]
        answers = await asyncio.gather(runtime.source.collect(),
                                       *(a.current() for a in runtime.actuators),
                                       return_exceptions=True)
        failed = False
        for part, answer in zip(parts, answers, strict=True):
            if isinstance(answer, BaseException):
                failed = True
                self._part_failed(runtime.name, part, answer)
            else:
                runtime.answered.add(part)
        if failed:
            return None
        observation, *states = answers
        runtime.measured_at = _newest(observation) or runtime.measured_at
        pools = {a.pool: state for a, state in zip(runtime.actuators, states, strict=True)}
        return dataclasses.replace(observation, **pools)

    def _part_failed(self, target: str, part: str, error: BaseException) -> None:
        kind = "metrics" if part == "metrics" else "actuator"
        self.telemetry.error(kind)
        if isinstance(error, (MetricsUnavailable, ActuatorError)):
            log.error(f"{kind}.unavailable", target=target, part=part, error=str(error),
                      action="skipping this target this tick: no actuation")
        else:
            log.error(f"{kind}.failed", target=target, part=part,
                      action="skipping this target this tick: no actuation", exc_info=error)

    async def _actuate(self, runtime: TargetRuntime, outcome: Outcome, leader: bool) -> Outcome:
        if outcome.decision is None:
            return outcome
        if not leader:
            applied = {a.pool: "standby: not applied (this replica does not hold the Lease)"
                       for a in runtime.actuators}
        else:
            results = await asyncio.gather(*(
                self._apply(runtime.name, a, outcome.decision) for a in runtime.actuators))
            applied = {a.pool: r for a, r in zip(runtime.actuators, results, strict=True)}
        return dataclasses.replace(outcome, applied=applied)

    async def _apply(self, target: str, actuator: Actuator, decision: Decision) -> str:
        if not self.is_leader:  # the Lease lapsed during this tick
            return "not applied: the Lease lapsed"
        try:
            result: ActuationResult = await actuator.apply(decision)
        except ActuatorError as exc:
            self.telemetry.error("actuator")
            log.error("actuation.failed", target=target, pool=actuator.pool, error=str(exc))
            return f"failed: {exc}"
        except Exception as exc:  # a bug must not stop the other pools and targets
            self.telemetry.error("internal")
            log.exception("actuation.crashed", target=target, pool=actuator.pool)
            return f"failed: {exc!r}"
        if result.changed:
            self.telemetry.actuations.labels(target, actuator.pool).inc()
        return result.message

    # --- leader election ---------------------------------------------------------------

    async def _elect(self) -> None:
        if self._elector is None:
            self.telemetry.leader.set(1)
            return
        period = self.config.leader_election.retry_period_seconds
        while True:
            try:
                await self._elector.try_acquire_or_renew()
            except ActuatorError as exc:
                self.telemetry.error("lease")
                log.error("lease.failed", error=str(exc), leader=self._elector.is_leader)
            self.telemetry.leader.set(self._elector.is_leader)
            await asyncio.sleep(period)

    # --- config reload -----------------------------------------------------------------

    async def _watch_config(self) -> None:
        """Poll the config file's content (a ConfigMap update swaps a symlink: its mtime
        need not change, its content does)."""
        if self._config_path is None:
            return
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            if _digest(self._config_path) != self._config_digest:
                log.info("config.changed", path=str(self._config_path))
                self.request_reload()

    def _reload(self) -> None:
        """Load the config again; keep the running one if the new one is invalid. A target
        whose settings are unchanged keeps its parts and its policy state."""
        self._reload_requested = False
        self._config_digest = _digest(self._config_path)
        try:
            new = load_config(self._config_path, self._overrides)
            targets = self._rebuild(new)
        except StartupError as exc:
            self.telemetry.error("config")
            log.error("config.rejected", path=str(self._config_path), error=str(exc),
                      action="keeping the running config")
            return
        for runtime in self._targets:
            if runtime not in targets:
                asyncio.get_running_loop().create_task(runtime.aclose())
        if new.leader_election != self.config.leader_election:
            log.warning("config.restart_needed", section="leader_election",
                        action="the Lease settings apply at the next start")
        if new.log_level != self.config.log_level:
            configure_logging(new.log_level)
        restarted = [t.name for t in targets if t not in self._targets]
        self.config, self._targets = new, targets
        log.info("config.reloaded", path=str(self._config_path),
                 targets=[t.name for t in targets], restarted=restarted)

    def _rebuild(self, new: Config) -> list[TargetRuntime]:
        reusable = list(self._targets) if self._unchanged_globals(new) else []
        targets: list[TargetRuntime] = []
        try:
            for target in new.targets:
                same = next((r for r in reusable if r.target == target), None)
                targets.append(same or self._build(new, target))
        except StartupError:
            for runtime in targets:
                if runtime not in self._targets:
                    asyncio.get_running_loop().create_task(runtime.aclose())
            raise
        return targets

    def _unchanged_globals(self, new: Config) -> bool:
        """Settings every target's parts are built from (the policy's tick, the source)."""
        return (new.tick_seconds, new.metrics) == (self.config.tick_seconds, self.config.metrics)

    # --- building ----------------------------------------------------------------------

    def _build(self, config: Config, target: Target) -> TargetRuntime:
        policy = make_policy(POLICY, target, config.tick_seconds, load_profile(target.profile))
        # A control plane that does not answer costs at most about a tick (the next tick is
        # the retry), never less than a floor that a busy but healthy one keeps within.
        budget_s = max(config.tick_seconds, MIN_CALL_BUDGET_S)
        actuators: list[Actuator] = []
        if target.kubernetes_pool:
            pool = target.kubernetes_pool
            actuators.append(KubernetesActuator(
                pool, api_client=self._kube(), dry_run=self._dry_run,
                max_writes_per_minute=pool.max_writes_per_minute,
                request_timeout_seconds=min(KUBERNETES_TIMEOUT_S, budget_s),
                retry=RetryPolicy(total_seconds=min(RetryPolicy().total_seconds, budget_s))))
        if target.modal_pool:
            actuators.append(ModalActuator(target.modal_pool, dry_run=self._dry_run,
                                           timeout_seconds=min(MODAL_TIMEOUT_S, budget_s)))
        self.telemetry.target_added(target.name, target.pools)
        return TargetRuntime(target, policy, self._source(config, target), actuators)

    def _source(self, config: Config, target: Target) -> MetricSource:
        metrics = config.metrics
        if metrics.source == "prometheus":
            selector = {**metrics.prometheus.selector, **target.selector}
            return PrometheusMetrics(metrics.prometheus.model_copy(update={"selector": selector}),
                                     clock=self.clock.now)
        if metrics.source == "direct":
            kube = self._kube() if metrics.direct.service else None
            return ScrapeMetrics.from_config(metrics.direct, kube, clock=self.clock.now)
        raise ConfigError(f"metrics.source {metrics.source!r} exists in the simulator only; "
                          "the controller reads 'prometheus' or 'direct'")

    def _kube(self) -> ApiClient:
        """One Kubernetes client shared by every target and the elector."""
        if self._kube_api is None:
            self._kube_api = kubernetes_api_client(self._kubeconfig)
        return self._kube_api

    # --- HTTP (read-only) --------------------------------------------------------------

    async def _serve_http(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ListenError(f"cannot listen on {self._host}:{self.port}: "
                              f"{exc.strerror or exc}") from None
        self.port = self._runner.addresses[0][1]  # the one bound when asked for port 0

    async def _healthz(self, request: web.Request) -> web.Response:
        silent_s = self.clock.monotonic() - self._last_tick_at
        limit_s = max(LIVENESS_TICKS * self.config.tick_seconds, LIVENESS_MIN_S)
        if silent_s > limit_s:
            return web.Response(status=503, text=f"no tick started for {silent_s:.0f} s\n")
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready:
            return web.Response(text="ready\n")
        waiting = {t.name: sorted({"metrics", *t.target.pools} - t.answered)
                   for t in self._targets if not t.has_answered}
        return web.Response(status=503, text=f"not ready; not answered yet: {waiting}\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.telemetry.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def run_daemon(daemon: Daemon) -> int:
    return asyncio.run(daemon.run())


def _identity() -> str:
    """Unique per process, as client-go's: the pod name (HOSTNAME in a pod) and a nonce."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _digest(path: Path | None) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def _newest(observation: Observation) -> float | None:
    times = [s.at for s in _samples(observation).values() if s.value is not None]
    return max(times, default=None)


def _samples(observation: Observation) -> dict[str, Sample]:
    return {f.name: getattr(observation, f.name) for f in dataclasses.fields(observation)
            if isinstance(getattr(observation, f.name), Sample)}


def _no_scale_down(decision: Decision, observation: Observation) -> Decision:
    """The decision, with no pool below what it is set to now."""
    k8s, modal = observation.kubernetes, observation.modal
    replicas, minimum = decision.kubernetes_replicas, decision.modal_min_containers
    if replicas is not None and k8s is not None and replicas < k8s.desired:
        replicas = k8s.desired
    buffer = decision.modal_buffer_containers or 0
    if minimum is not None and modal is not None and minimum + buffer < modal.desired:
        minimum = modal.desired - buffer
    if (replicas, minimum) == (decision.kubernetes_replicas, decision.modal_min_containers):
        return decision
    reason = dataclasses.replace(decision.reason, summary=decision.reason.summary +
                                 " (held up: metrics degraded, no scale-down)")
    return dataclasses.replace(decision, kubernetes_replicas=replicas,
                               modal_min_containers=minimum, reason=reason)


def _log_decision(target: str, outcome: Outcome, leader: bool, dry_run: bool) -> None:
    observation, decision = outcome.observation, outcome.decision
    pools = {pool: {k: v for k, v in dataclasses.asdict(state).items() if k != "at"}
             for pool in ("kubernetes", "modal")
             if (state := getattr(observation, pool)) is not None}
    log.info(
        "decision", target=target, leader=leader, dry_run=dry_run,
        inputs={"pools": pools, **{name: s.value for name, s in _samples(observation).items()}},
        outputs={"kubernetes_replicas": decision.kubernetes_replicas,
                 "modal_min_containers": decision.modal_min_containers,
                 "modal_buffer_containers": decision.modal_buffer_containers},
        reason={"driver": decision.reason.driver, "summary": decision.reason.summary,
                "details": decision.reason.details},
        applied=outcome.applied,
    )
