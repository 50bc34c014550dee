"""The configuration: one pydantic model tree loaded from YAML.

Every module receives its own section. Unknown keys are errors (a typo must not silently
fall back to a default), and every error names the field path and the bad value.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Startup(Section):
    """Start-up delay of a new replica/container (seconds): a triangular distribution."""

    low: NonNegFloat
    mode: NonNegFloat
    high: NonNegFloat

    @model_validator(mode="after")
    def _ordered(self) -> Startup:
        if not self.low <= self.mode <= self.high:
            raise ValueError(f"need low <= mode <= high, got {self.low}, {self.mode}, {self.high}")
        return self

    @property
    def mean(self) -> float:
        return (self.low + self.mode + self.high) / 3


class Slo(Section):
    # vLLM's TTFT histogram only tells whether a request took longer than one of its bucket
    # bounds (... 0.5, 0.75, 1, 2.5, 5, 7.5, 10 s); between two, the share of late requests
    # is interpolated. For an SLO inside a bucket, `tune` fits the feedback's threshold
    # (policy.controller.ttft_feedback_fraction) to your traffic.
    ttft_seconds: PositiveFloat = 3.0
    itl_seconds: PositiveFloat = 0.15
    # Fraction of requests that must meet the TTFT SLO (and complete).
    attainment: Fraction = 0.99


class KubernetesPool(Section):
    enabled: bool = True
    namespace: str = "default"
    deployment: str = "vllm"
    min_replicas: NonNegInt = 0
    max_replicas: Annotated[int, Field(ge=1)] = 10
    gpus_per_replica: Annotated[int, Field(ge=1)] = 1
    price_per_gpu_hour: NonNegFloat = 0.76
    # Node provisioning + image pull + model load + warm-up, until the pod is Ready.
    startup_seconds: Startup = Startup(low=120, mode=240, high=480)
    # terminationGracePeriodSeconds: in-flight requests past it are lost on scale-down.
    drain_seconds: NonNegFloat = 60
    # The controller rescales the Deployment at most this often (a runaway guard).
    max_writes_per_minute: Annotated[int, Field(ge=1)] = 6

    @model_validator(mode="after")
    def _bounds(self) -> KubernetesPool:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})"
            )
        return self


class ModalPool(Section):
    enabled: bool = True
    app: str = "vllm-inference"
    function: str = "serve"
    min_containers: NonNegInt = 0
    max_containers: Annotated[int, Field(ge=1)] = 20
    buffer_containers: NonNegInt = 0
    scaledown_window_seconds: Annotated[float, Field(ge=2, le=3600)] = 60
    # Inputs one container takes at once (@modal.concurrent(max_inputs=...)), and the level
    # per container above which Modal starts more (target_inputs; default: max_inputs).
    max_inputs: Annotated[int, Field(ge=1)] = 16
    target_inputs: Annotated[int, Field(ge=1)] | None = None
    gpus_per_container: Annotated[int, Field(ge=1)] = 1
    price_per_gpu_second: NonNegFloat = 0.000306
    # Region selection / non-preemptible multipliers on Modal's list price.
    price_multiplier: Annotated[float, Field(ge=1)] = 1.0
    gpu_snapshot: bool = True
    cold_start_seconds: Startup = Startup(low=45, mode=60, high=120)
    snapshot_start_seconds: Startup = Startup(low=5, mode=8, high=12)

    @property
    def startup(self) -> Startup:
        return self.snapshot_start_seconds if self.gpu_snapshot else self.cold_start_seconds

    @property
    def price_per_container_second(self) -> float:
        return self.price_per_gpu_second * self.gpus_per_container * self.price_multiplier

    @model_validator(mode="after")
    def _bounds(self) -> ModalPool:
        if self.min_containers > self.max_containers:
            raise ValueError(
                f"min_containers ({self.min_containers}) > max_containers ({self.max_containers})"
            )
        return self


class HpaPolicy(Section):
    """The Kubernetes HPA algorithm on one vLLM metric (the `hpa` baseline)."""

    metric: Literal["running", "waiting", "kv_usage", "running_plus_waiting"] = "running"
    target_average: PositiveFloat = 60
    tolerance: NonNegFloat = 0.1
    scale_down_stabilization_seconds: NonNegFloat = 300
    scale_up_stabilization_seconds: NonNegFloat = 0
    # behavior defaults: up: max(100%, +4 pods) per 15 s; down: 100% per 15 s.
    scale_up_percent: PositiveFloat = 100
    scale_up_pods: Annotated[int, Field(ge=1)] = 4
    scale_down_percent: PositiveFloat = 100
    policy_period_seconds: PositiveFloat = 15


class StaticPolicy(Section):
    kubernetes_replicas: NonNegInt = 1
    modal_min_containers: NonNegInt = 0


class ControllerPolicy(Section):
    """Parameters of the product's decision core (see controller/core)."""

    # Forecast: Holt (level + trend) smoothing of the arrival rate, with an EWMA error band.
    level_alpha: Fraction = 0.3
    trend_beta: Annotated[float, Field(ge=0, le=1)] = 0.05
    error_alpha: Fraction = 0.1
    band_z: NonNegFloat = 1.0
    # Seasonal-naive term: the rate one season before the forecast's time counts once that
    # much history exists (86400: daily; 604800: weekly, for weekday/weekend patterns; 0: none).
    season_seconds: NonNegFloat = 86400
    # Headroom on top of the forecast band when sizing capacity (the band and the SLO-safe
    # capacity already carry the margin; raise for a safety factor of your own).
    headroom: Annotated[float, Field(ge=0, le=2)] = 0.0
    # Target utilisation of one replica's SLO-safe capacity.
    target_utilization: Fraction = 1.0
    # Feedback: measured signals above these targets add capacity.
    ttft_feedback_fraction: Annotated[float, Field(gt=0, le=2)] = 1.0
    # TTFT feedback spends the SLO's error budget (1 − attainment): requests over the SLO
    # add capacity when their share in the metrics window is `fast_burn` times the budget,
    # or above it while the last `error_budget_window_seconds` as a whole spent it all.
    fast_burn: Annotated[float, Field(ge=1)] = 5
    error_budget_window_seconds: PositiveFloat = 3600
    kv_usage_target: Fraction = 0.9
    # Requests queued (in vLLM, or at Modal for a container) per ready replica before it is
    # pressure. Added capacity drains vLLM's queue beyond it, and all of Modal's.
    waiting_per_replica_target: NonNegFloat = 2
    # Safety.
    scale_down_stabilization_seconds: NonNegFloat = 300
    max_scale_up_per_tick: Annotated[int, Field(ge=1)] = 10
    max_scale_down_per_tick: Annotated[int, Field(ge=1)] = 2
    # Kubernetes replicas shrink only when the load falls by more than this share of the
    # pods asked for; with Modal beside them they also grow only past it (the HPA's tolerance).
    hysteresis: Annotated[float, Field(ge=0, le=1)] = 0.1
    stale_after_seconds: PositiveFloat = 60
    # Hybrid: Kubernetes carries this quantile, over the last base_load_window_seconds, of
    # the arrival rate held at its peak for Modal's scaledown window (the base load);
    # None: 1 − (Kubernetes price / Modal price), the share of time a layer of load must be
    # present for an hourly-billed pod to beat per-second billing. A short window moves a
    # lasting level shift onto Kubernetes within minutes.
    base_load_quantile: Fraction | None = None
    base_load_window_seconds: PositiveFloat = 420
    modal_buffer_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    # Bursts shorter than the rate window (a rate between two scrapes over twice the window's,
    # or an overload with most warm capacity idle on average) keep a reserve of warm replicas:
    # the most any burst needed, each halved per this long since it came; lulls shorter than a
    # pod's start-up make scale-down wait one out for this long (0: both off).
    burst_memory_seconds: NonNegFloat = 1800


class Policies(Section):
    controller: ControllerPolicy = ControllerPolicy()
    hpa: HpaPolicy = HpaPolicy()
    static: StaticPolicy = StaticPolicy()


class Target(Section):
    """One model served by vLLM: its pools, SLO, profile and policy parameters."""

    name: str = "default"
    model: str = "meta-llama/Meta-Llama-3-8B-Instruct"
    # A shipped profile name (config/profiles/NAME.yaml) or a path to a profile YAML.
    profile: str = "a10g-llama3-8b"
    # Prometheus label matchers picking this target's vLLM series (regexes, e.g.
    # {model_name: ...}); merged over metrics.prometheus.selector, this one winning.
    selector: dict[str, str] = Field(default_factory=dict)
    slo: Slo = Slo()
    kubernetes: KubernetesPool | None = KubernetesPool()
    modal: ModalPool | None = ModalPool()
    policy: Policies = Policies()

    @model_validator(mode="after")
    def _some_pool(self) -> Target:
        if not self.pools:
            raise ValueError("at least one of kubernetes and modal must be configured and enabled")
        return self

    @property
    def kubernetes_pool(self) -> KubernetesPool | None:
        return self.kubernetes if self.kubernetes is not None and self.kubernetes.enabled else None

    @property
    def modal_pool(self) -> ModalPool | None:
        return self.modal if self.modal is not None and self.modal.enabled else None

    @property
    def pools(self) -> list[str]:
        names = []
        if self.kubernetes_pool:
            names.append("kubernetes")
        if self.modal_pool:
            names.append("modal")
        return names


class PrometheusSource(Section):
    url: str = "http://prometheus:9090"
    # Label selectors that pick the target's vLLM series.
    selector: dict[str, str] = Field(default_factory=dict)
    rate_window: str = "1m"
    timeout_seconds: PositiveFloat = 5
    verify_tls: bool = True


class DirectScrapeSource(Section):
    targets: list[str] = Field(default_factory=list)
    # Or discover them from a Service's EndpointSlices.
    service: str | None = None
    namespace: str = "default"
    port: int = 8000
    timeout_seconds: PositiveFloat = 2


class Metrics(Section):
    source: Literal["prometheus", "direct", "simulated"] = "prometheus"
    prometheus: PrometheusSource = PrometheusSource()
    direct: DirectScrapeSource = DirectScrapeSource()


class LeaderElection(Section):
    """Run several controller replicas: only the holder of this Lease actuates.

    Timings as client-go's leader election: the holder renews every `retry_period_seconds`
    and stops actuating if it could not renew for `renew_deadline_seconds`; a standby takes
    over once the Lease has not been renewed for `lease_duration_seconds`.
    """

    enabled: bool = True
    namespace: str = "default"
    lease_name: str = "vllm-autoscaler"
    lease_duration_seconds: Annotated[int, Field(ge=1)] = 15
    renew_deadline_seconds: PositiveFloat = 10
    retry_period_seconds: PositiveFloat = 2

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElection:
        if not self.retry_period_seconds < self.renew_deadline_seconds < self.lease_duration_seconds:
            raise ValueError(
                "need retry_period_seconds < renew_deadline_seconds < lease_duration_seconds, got "
                f"{self.retry_period_seconds}, {self.renew_deadline_seconds}, "
                f"{self.lease_duration_seconds}"
            )
        return self


class Simulation(Section):
    """The simulated world: how requests are routed, measured and given up on."""

    seed: int = 0
    # Replay the trace's first this-many seconds before t=0 (not counted in the results),
    # starting with the primary pool sized for them, so that every policy is judged from a
    # running state rather than a cold start. 0: start cold at t=0.
    warmup_seconds: NonNegFloat = 600
    # A request not started within this long is failed (client timeout).
    request_timeout_seconds: PositiveFloat = 600
    # Spill to Modal once the least-loaded ready Kubernetes replica has this many requests
    # waiting (not admitted by vLLM: max_num_seqs or the KV cache is full).
    spill_waiting: Annotated[int, Field(ge=1)] = 1
    # Histogram quantiles are computed over this window, as PromQL's rate(...[window]).
    metrics_window_seconds: PositiveFloat = 60
    # Prometheus scrapes the replicas this often; policies see vLLM's metrics as of the last
    # scrape, as a live controller querying Prometheus does. Scrapes fall half an interval off
    # the ticks (the mean age of a scrape not synchronised with them). 0: read at the tick.
    scrape_interval_seconds: NonNegFloat = 15


class Config(Section):
    tick_seconds: PositiveFloat = 15
    targets: list[Target] = Field(default_factory=lambda: [Target()], min_length=1)
    metrics: Metrics = Metrics()
    simulation: Simulation = Simulation()
    leader_election: LeaderElection = LeaderElection()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _unique_targets(self) -> Config:
        names = [t.name for t in self.targets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"target names must be unique, repeated: {dupes}")
        return self

    @model_validator(mode="after")
    def _direct_scrape_serves_one_target(self) -> Config:
        # A direct scrape reads every listed replica whole: it cannot tell models apart.
        if self.metrics.source == "direct" and len(self.targets) > 1:
            raise ValueError(
                f"metrics.source 'direct' serves one target, got {len(self.targets)}: "
                "use metrics.source 'prometheus' with a selector per target"
            )
        return self
