"""The controller's own Prometheus metrics (served on /metrics by the daemon).

A registry of its own rather than prometheus_client's global one: two controllers in one
process (tests) do not mix their figures, and no process metrics of libraries leak in.
"""

from __future__ import annotations

import math

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from .types import Decision, Observation, PoolState

PREFIX = "vllm_autoscaler"
ERROR_KINDS = ("metrics", "actuator", "lease", "config", "internal")
# Reason details of the controller policy that hold its forecast, by pool and bound.
FORECAST_DETAILS = {
    ("kubernetes", "point"): "k8s_forecast", ("kubernetes", "upper"): "k8s_upper",
    ("modal", "point"): "modal_forecast", ("modal", "upper"): "modal_upper",
}
TICK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60)


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.desired = Gauge(
            f"{PREFIX}_desired_capacity", "Capacity the last decision asks for (Kubernetes "
            "replicas; Modal warm containers: min + buffer)", ["target", "pool"], registry=r)
        self.current = Gauge(
            f"{PREFIX}_current_capacity", "Capacity the pool's control plane reports",
            ["target", "pool", "state"], registry=r)
        self.forecast = Gauge(
            f"{PREFIX}_forecast_requests_per_second", "Forecast arrival rate over the pool's "
            "lead time (point and upper band)", ["target", "pool", "bound"], registry=r)
        self.arrival_rate = Gauge(
            f"{PREFIX}_arrival_rate_requests_per_second", "Measured arrival rate", ["target"],
            registry=r)
        self.decision = Info(
            f"{PREFIX}_decision", "Driver of the last decision (its summary is in the logs)",
            ["target"], registry=r)
        self.metrics_age = Gauge(
            f"{PREFIX}_metrics_age_seconds", "Age of the newest vLLM measurement of the target",
            ["target"], registry=r)
        self.tick_duration = Histogram(
            f"{PREFIX}_tick_duration_seconds", "Time one tick took (all targets)",
            buckets=TICK_BUCKETS, registry=r)
        self.tick_overruns = Counter(
            f"{PREFIX}_tick_overruns", "Ticks that took longer than tick_seconds", registry=r)
        self.errors = Counter(f"{PREFIX}_errors", "Errors, by kind", ["kind"], registry=r)
        self.actuations = Counter(
            f"{PREFIX}_actuations", "Changes applied to a pool", ["target", "pool"], registry=r)
        self.leader = Gauge(
            f"{PREFIX}_leader", "1 while this replica holds the Lease and actuates", registry=r)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)  # exported at 0 from the start, for rate() and alerts

    def target_added(self, target: str, pools: list[str]) -> None:
        for pool in pools:
            self.actuations.labels(target, pool)  # exported at 0 from the start

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def observed(self, target: str, observation: Observation) -> None:
        rate = observation.arrival_rate.value
        self.arrival_rate.labels(target).set(math.nan if rate is None else rate)
        for pool in ("kubernetes", "modal"):
            state: PoolState | None = getattr(observation, pool)
            if state is not None:
                for name in ("ready", "starting", "desired"):
                    self.current.labels(target, pool, name).set(getattr(state, name))

    def decided(self, target: str, decision: Decision) -> None:
        desired = {
            "kubernetes": decision.kubernetes_replicas,
            "modal": None if decision.modal_min_containers is None else
            decision.modal_min_containers + (decision.modal_buffer_containers or 0),
        }
        for pool, value in desired.items():
            if value is not None:
                self.desired.labels(target, pool).set(value)
        for (pool, bound), key in FORECAST_DETAILS.items():
            value = decision.reason.details.get(key)
            if isinstance(value, (int, float)):
                self.forecast.labels(target, pool, bound).set(value)
        self.decision.labels(target).info({"driver": decision.reason.driver})

    def render(self) -> bytes:
        return generate_latest(self.registry)
