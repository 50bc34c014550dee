"""How fast one vLLM replica of a given model on a given GPU is.

Used alike by the simulator's engine model and the controller's capacity model. One engine
step (a decode token for every running sequence plus a chunk of prefill tokens) takes

    step_s = decode_base_s + decode_per_seq_s * batch + decode_per_context_token_s * context
             + prefill_per_token_s * prefill_tokens

where `context` is the number of tokens (prompt + generated) held by the decoding batch:
decode is memory-bound (weights once per step, KV cache per context token), prefill is
compute-bound (per prompt token).

The KV cache is `kv_cache_tokens` (what vLLM reports: num_gpu_blocks x block_size) in blocks of
`kv_block_size` tokens, as vLLM allocates it: a sequence holds whole blocks, one block is
vLLM's null block (never holds a token). Default 16, vLLM's block size on GPUs; its CPU backend
uses 128 (`profile` reads the server's from `vllm:cache_config_info`). `kv_watermark` is the
share of blocks vLLM keeps free when it admits a request beside running ones (its
`--watermark`): vLLM V1 keeps none by default; the default here, 1%, is vLLM V0's and what
profiles without the field were always simulated with.

`request_overhead_s` is the time a request spends in the server outside the engine (vLLM's
HTTP front end: parsing, tokenizing, detokenizing, streaming), once per request; it adds to
TTFT and end-to-end latency but takes no engine time. Default 0: profiles without it (the
shipped estimates) model the engine alone. `request_overhead_quantiles_s`, when given, is
that time's measured spread: its quantiles at equally spaced levels from 0 to 1, each request
taking its own from them (a front end's time varies from request to request, and at light
load that spread is most of the TTFT's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Positive = Annotated[float, Field(gt=0)]
NonNeg = Annotated[float, Field(ge=0)]


class ProfileError(ValueError):
    """A replica profile that cannot be used; the message names the file and the field."""


class ReplicaProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    model: str
    gpu: str
    # Where the figures come from: "measured by `vllm-autoscaler profile` on ..." or
    # "estimate from ..." — estimates must say so.
    source: str
    max_num_seqs: Annotated[int, Field(ge=1)] = 256
    max_num_batched_tokens: Annotated[int, Field(ge=1)] = 2048
    kv_cache_tokens: Annotated[int, Field(ge=1)]
    kv_block_size: Annotated[int, Field(ge=1)] = 16
    kv_watermark: Annotated[float, Field(ge=0, lt=1)] = 0.01
    prefill_per_token_s: Positive
    decode_base_s: Positive
    decode_per_seq_s: NonNeg = 0.0
    decode_per_context_token_s: NonNeg = 0.0
    request_overhead_s: NonNeg = 0.0
    request_overhead_quantiles_s: tuple[NonNeg, ...] = ()

    @model_validator(mode="after")
    def _room_for_a_block(self) -> ReplicaProfile:
        if self.kv_cache_tokens < 2 * self.kv_block_size:
            raise ValueError(
                f"kv_cache_tokens {self.kv_cache_tokens} holds fewer than 2 blocks of kv_block_size "
                f"{self.kv_block_size} (one is vLLM's null block)"
            )
        return self

    @model_validator(mode="after")
    def _quantiles_rise(self) -> ReplicaProfile:
        q = self.request_overhead_quantiles_s
        if len(q) == 1 or any(b < a for a, b in zip(q, q[1:])):
            raise ValueError(f"request_overhead_quantiles_s must be 2 or more rising values, got {list(q)}")
        return self

    def step_seconds(self, batch: int, context_tokens: float, prefill_tokens: int) -> float:
        return (
            self.decode_base_s
            + self.decode_per_seq_s * batch
            + self.decode_per_context_token_s * context_tokens
            + self.prefill_per_token_s * prefill_tokens
        )


def profiles_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("vllm_autoscaler.config").joinpath("profiles")))


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def load_profile(name_or_path: str) -> ReplicaProfile:
    """A shipped profile by name (config/profiles/NAME.yaml) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = profiles_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            raise ProfileError(
                f"unknown replica profile {name_or_path!r}; shipped: {', '.join(shipped_profiles())}"
                " (or give a path to a profile YAML)"
            )
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path}: cannot read replica profile: {exc}") from exc
    try:
        return ReplicaProfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise ProfileError(f"{path}: invalid replica profile: {problems}") from None
