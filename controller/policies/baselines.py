"""Fixed-capacity baselines: `static` (a fixed Kubernetes replica count) and `modal-only`
(no Kubernetes replicas: Modal's built-in autoscaling alone, with its configured warm pool)."""

from __future__ import annotations

from ...config.schema import Target
from ..types import Decision, Observation, Reason


class StaticPolicy:
    """`replicas` Kubernetes replicas always; Modal at `modal_min` warm containers (default:
    the static policy's config) and its configured buffer."""

    name = "static"

    def __init__(self, target: Target, replicas: int | None = None, modal_min: int | None = None):
        k8s, modal = target.kubernetes_pool, target.modal_pool
        replicas = target.policy.static.kubernetes_replicas if replicas is None else replicas
        modal_min = target.policy.static.modal_min_containers if modal_min is None else modal_min
        if k8s and not k8s.min_replicas <= replicas <= k8s.max_replicas:
            raise ValueError(
                f"static replicas {replicas} outside the Kubernetes pool's "
                f"[{k8s.min_replicas}, {k8s.max_replicas}]"
            )
        if modal and not 0 <= modal_min <= modal.max_containers:
            raise ValueError(f"static modal_min {modal_min} outside [0, {modal.max_containers}]")
        self.decision = Decision(
            replicas if k8s else None,
            modal_min if modal else None,
            modal.buffer_containers if modal else None,
            Reason("static", f"fixed: {replicas if k8s else 'no'} Kubernetes replicas, "
                   f"{modal_min if modal else 'no'} Modal warm containers"),
        )  # fmt: skip

    def decide(self, observation: Observation, now: float) -> Decision:
        return self.decision


class ModalOnlyPolicy:
    """Kubernetes at 0 replicas (None without that pool); Modal min/buffer from its config."""

    name = "modal-only"

    def __init__(self, target: Target):
        modal = target.modal_pool
        if modal is None:
            raise ValueError(f"target {target.name!r}: the modal-only policy needs a Modal pool")
        self.decision = Decision(
            0 if target.kubernetes_pool else None,
            modal.min_containers,
            modal.buffer_containers,
            Reason("modal-only", f"Modal autoscaling alone: min {modal.min_containers}, "
                   f"buffer {modal.buffer_containers} containers"),
        )  # fmt: skip

    def decide(self, observation: Observation, now: float) -> Decision:
        return self.decision
