"""Small builders shared by the simulator tests."""

from __future__ import annotations

import numpy as np

from vllm_autoscaler.config.loader import load_config
from vllm_autoscaler.config.schema import Config, Target
from vllm_autoscaler.controller.profile import ReplicaProfile
from vllm_autoscaler.controller.types import Decision, Reason
from vllm_autoscaler.simulations.simulator import SimResult, Simulation
from vllm_autoscaler.simulations.traces import Trace

# Round numbers so results can be computed by hand.
PROFILE = ReplicaProfile(
    name="test", model="test", gpu="test", source="hand-made for tests",
    max_num_seqs=4, max_num_batched_tokens=1000, kv_cache_tokens=100_000,
    prefill_per_token_s=0.001, decode_base_s=0.02, decode_per_seq_s=0.01,
    decode_per_context_token_s=0.0,
)  # fmt: skip


def trace(arrivals, prompts, outputs) -> Trace:
    return Trace(
        np.asarray(arrivals, dtype=float),
        np.asarray(prompts, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
        name="hand-made",
    )


def config(*overrides: str) -> Config:
    instant = "{low: 0, mode: 0, high: 0}"
    return load_config(
        overrides=[
            f"targets.0.kubernetes.startup_seconds={instant}",
            "targets.0.kubernetes.min_replicas=0",
            f"targets.0.modal.snapshot_start_seconds={instant}",
            "simulation.warmup_seconds=0",
            *overrides,
        ]
    )


class Fixed:
    """A policy that always asks for the same capacity."""

    name = "fixed"

    def __init__(self, replicas: int | None, modal_min: int | None = None):
        self.replicas, self.modal_min = replicas, modal_min

    def decide(self, observation, now) -> Decision:
        return Decision(self.replicas, self.modal_min, 0, Reason("fixed", "fixed"))


def run(tr: Trace, cfg: Config, policy, profile: ReplicaProfile = PROFILE) -> SimResult:
    target: Target = cfg.targets[0]
    return Simulation(tr, cfg, target, profile, policy).run()
