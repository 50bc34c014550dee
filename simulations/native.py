"""The engine the simulator runs: engine.py compiled by mypyc when a build of this very
engine.py is present, else engine.py itself.

The compiled `Replica` is ~1.6x faster and gives bit-identical results
(tests/simulations/test_native_engine.py). `make native` (build_native.py) makes it, and it
carries the SHA-256 of the source it was compiled from: a build of any other engine.py is
ignored, so an edit to engine.py is never shadowed by a stale build, only slower until rebuilt.
Import `Replica` from here, not from engine.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from . import engine
from .build_native import COMPILED_MODULE, ENGINE_SOURCE, source_sha256

log = structlog.get_logger(__name__)


def compiled_replica(sha256: str) -> type[engine.Replica] | None:
    """The compiled Replica if there is one built from the source with this hash."""
    try:
        compiled = importlib.import_module(COMPILED_MODULE)
    except Exception:  # not built, built for another Python, or a stale build that fails
        return None
    return compiled.Replica if getattr(compiled, "SOURCE_SHA256", None) == sha256 else None


def pick_replica(source: Path = ENGINE_SOURCE) -> type[engine.Replica]:
    replica = compiled_replica(source_sha256(source))
    if replica is None:
        log.info(
            "simulator engine is pure Python: no compiled build of this engine.py; build it "
            "(~1.6x faster) with `make native` (python -m vllm_autoscaler.simulations.build_native)"
        )
        return engine.Replica
    return replica


if TYPE_CHECKING:
    from .engine import Replica
else:
    Replica = pick_replica()
COMPILED = Replica is not engine.Replica
