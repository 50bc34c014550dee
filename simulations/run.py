"""Run policies over a trace: the entry points behind `simulate` and `compare`."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed

from ..config.loader import ConfigError, apply_override, validate_config
from ..config.schema import Config, Target
from ..controller.policies import POLICIES, make_policy
from ..controller.profile import ReplicaProfile, load_profile
from ..controller.types import Policy
from .demand import peak_replicas
from .oracle import OraclePolicy, oracle_schedule, start_up_lead
from .simulator import SimResult, Simulation
from .traces import Trace

SIMULATOR_POLICIES = ("oracle", "static-peak")


def policy_names() -> list[str]:
    return [*POLICIES, *SIMULATOR_POLICIES]


def parse_policy_spec(spec: str, config: Config) -> tuple[str, str, Config]:
    """`name` or `name:key=value` (a parameter of that policy's config section, e.g.
    `hpa:target_average=40` or `static:kubernetes_replicas=3`): label, name and config."""
    name, _, setting = spec.strip().partition(":")
    if name not in policy_names():
        raise ConfigError(f"unknown policy {name!r}; choose from {', '.join(policy_names())}")
    if not setting:
        return name, name, config
    section = name.replace("-", "_")
    data = config.model_dump()
    for i in range(len(data["targets"])):
        apply_override(data, f"targets.{i}.policy.{section}.{setting}")
    return spec.strip(), name, validate_config(data, f"policy {spec!r}")


def build_policy(
    name: str, config: Config, target: Target, profile: ReplicaProfile, trace: Trace
) -> Policy:
    if name == "oracle":
        schedule = oracle_schedule(trace, config, target, profile)
        return OraclePolicy(target, schedule, start_up_lead(target, config.tick_seconds))
    if name == "static-peak":
        from ..controller.policies.baselines import StaticPolicy

        k8s = target.kubernetes_pool
        replicas = peak_replicas(trace, target, profile)
        if k8s:
            replicas = min(max(replicas, k8s.min_replicas), k8s.max_replicas)
        policy = StaticPolicy(target, replicas)
        policy.name = "static-peak"
        return policy
    return make_policy(name, target, config.tick_seconds, profile)


def pick_target(config: Config, name: str | None) -> Target:
    if name is None:
        return config.targets[0]
    for target in config.targets:
        if target.name == name:
            return target
    raise ConfigError(f"no target named {name!r}; targets: {[t.name for t in config.targets]}")


def edit_target(config: Config, target_name: str | None, edit: Callable[[dict], None]) -> Config:
    """A copy of the config with one target's section changed by `edit` (on its plain data)."""
    index = config.targets.index(pick_target(config, target_name))
    data = config.model_dump(mode="json")
    edit(data["targets"][index])
    return validate_config(data, "edited config")


def simulate(
    trace: Trace,
    config: Config,
    policy_spec: str,
    target_name: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimResult:
    label, name, config = parse_policy_spec(policy_spec, config)
    target = pick_target(config, target_name)
    profile = load_profile(target.profile)
    policy = build_policy(name, config, target, profile, trace)
    result = Simulation(trace, config, target, profile, policy, progress).run()
    result.policy = label
    return result


def compare(
    trace: Trace,
    config: Config,
    policy_specs: list[str],
    target_name: str | None = None,
    workers: int = 1,
    on_done: Callable[[SimResult], None] | None = None,
) -> dict[str, SimResult]:
    """Every policy on the same trace (in parallel processes when workers > 1)."""
    for spec in policy_specs:
        parse_policy_spec(spec, config)  # fail fast on a bad name before any work
    results: dict[str, SimResult] = {}
    if workers <= 1:
        for spec in policy_specs:
            results[spec] = simulate(trace, config, spec, target_name)
            if on_done:
                on_done(results[spec])
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {
                pool.submit(simulate, trace, config, spec, target_name): spec
                for spec in policy_specs
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if on_done:
                    on_done(results[futures[future]])
    return {spec: results[spec] for spec in policy_specs}
