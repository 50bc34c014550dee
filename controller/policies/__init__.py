"""The policies a target can run, by name. All are pure: observation and time in, decision out."""

from __future__ import annotations

from collections.abc import Callable

from ...config.schema import Target
from ..profile import ReplicaProfile
from ..types import Policy
from .autoscaler import ControllerPolicy
from .baselines import ModalOnlyPolicy, StaticPolicy
from .hpa import HpaPolicy

PolicyFactory = Callable[[Target, float, ReplicaProfile], Policy]

POLICIES: dict[str, PolicyFactory] = {
    "controller": ControllerPolicy,
    "static": lambda target, tick_s, profile: StaticPolicy(
        target, target.policy.static.kubernetes_replicas, target.policy.static.modal_min_containers
    ),
    "hpa": lambda target, tick_s, profile: HpaPolicy(target, tick_s),
    "modal-only": lambda target, tick_s, profile: ModalOnlyPolicy(target),
}


def make_policy(name: str, target: Target, tick_s: float, profile: ReplicaProfile) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}") from None
    return factory(target, tick_s, profile)
