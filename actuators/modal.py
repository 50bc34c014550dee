"""Modal warm-pool actuator: reads and sets a deployed function's autoscaler settings.

It drives the real `modal` client (`Function.autoscaler`, `get_current_stats`). Every apply
is reconciled against what Modal reports, because redeploying the app wipes runtime
overrides: the settings are re-applied whenever they differ, and left alone when they match.
The token comes from Modal's usual sources (MODAL_TOKEN_ID / MODAL_TOKEN_SECRET, or the
profile in ~/.modal.toml) and is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import modal
import modal.config
import modal.exception
import structlog
from modal.types import FunctionAutoscalerSettings, FunctionCurrentStats

from ..config.schema import ModalPool
from ..controller.types import ActuationResult, Decision, PoolState
from .errors import (
    ActuatorError,
    AuthenticationFailed,
    PermissionDenied,
    TargetNotFound,
    Unavailable,
)

log = structlog.get_logger(__name__)

# hpack (HTTP/2, under the modal client) logs every header at DEBUG, the token included:
# keep it quiet even when the root logger is at DEBUG.
logging.getLogger("hpack").setLevel(logging.INFO)

# What the client raises once its own retries (3, with backoff) are spent, or cannot connect.
_UNAVAILABLE = (
    modal.exception.ServiceError,
    modal.exception.InternalError,
    modal.exception.ConnectionError,
    modal.exception.TimeoutError,
    OSError,
)


class ModalActuator:
    """Sets min/buffer containers of one deployed Modal function from decisions."""

    pool = "modal"

    def __init__(
        self,
        config: ModalPool,
        *,
        dry_run: bool = False,
        timeout_seconds: float = 30.0,
        client: modal.Client | None = None,
    ) -> None:
        self._config = config
        self._dry_run = dry_run
        self._timeout_s = timeout_seconds
        self._client = client
        self._owns_client = client is None
        self._function: modal.Function | None = None
        self._where = f"Modal function '{config.function}' of app '{config.app}'"
        self._log = log.bind(pool=self.pool, app=config.app, function=config.function)

    async def current(self) -> PoolState:
        async with self._talking_to_modal("read the warm pool"):
            settings, stats = await self._read(await self._lookup())
        return self._pool_state(settings, stats)

    async def apply(self, decision: Decision) -> ActuationResult:
        wanted = self._wanted(decision)
        if not wanted:
            return ActuationResult(self.pool, False, None, None, "decision leaves Modal as it is")
        async with self._talking_to_modal("update the warm pool"):
            function = await self._lookup()
            settings, stats = await self._read(function)
            before = self._pool_state(settings, stats)
            changes = {k: v for k, v in wanted.items() if getattr(settings, k) != v}
            if changes and not self._dry_run:
                settings = await function.autoscaler.update.aio(**changes)
        if not changes:
            return ActuationResult(self.pool, False, before, before, "settings already match")
        if self._dry_run:
            self._log.info("modal.dry_run", would_set=changes, reason=decision.reason.summary)
            message = f"dry run: would set {changes}"
            return ActuationResult(self.pool, False, before, before, message)
        self._log.info("modal.updated", changes=changes, reason=decision.reason.summary)
        after = self._pool_state(settings, stats)
        return ActuationResult(self.pool, True, before, after, f"set {changes}")

    async def aclose(self) -> None:
        """Close the client this actuator opened (a client passed in stays open)."""
        if self._owns_client and self._client is not None:
            await self._client.close.aio()
        self._client = None
        self._function = None

    def _wanted(self, decision: Decision) -> dict[str, int]:
        """The settings a decision asks for; empty when it leaves Modal alone."""
        from_decision = {
            "min_containers": decision.modal_min_containers,
            "buffer_containers": decision.modal_buffer_containers,
        }
        wanted = {k: v for k, v in from_decision.items() if v is not None}
        if not wanted:
            return {}
        if wanted.get("min_containers", 0) > self._config.max_containers:
            self._log.warning(
                "modal.min_above_max",
                min_containers=wanted["min_containers"],
                max_containers=self._config.max_containers,
            )
            wanted["min_containers"] = self._config.max_containers
        return wanted | {
            "max_containers": self._config.max_containers,
            "scaledown_window": round(self._config.scaledown_window_seconds),
        }

    async def _read(
        self, function: modal.Function
    ) -> tuple[FunctionAutoscalerSettings, FunctionCurrentStats]:
        return await asyncio.gather(
            function.autoscaler.settings.aio(), function.get_current_stats.aio()
        )

    async def _lookup(self) -> modal.Function:
        if self._client is None:
            self._client = await modal.Client.from_credentials.aio(*_credentials())
        if self._function is None:
            function = modal.Function.from_name(
                self._config.app, self._config.function, client=self._client
            )
            await function.hydrate.aio()
            self._function = function
        return self._function

    def _pool_state(
        self, settings: FunctionAutoscalerSettings, stats: FunctionCurrentStats
    ) -> PoolState:
        # Modal reports containers in total, not which are still starting.
        warm_pool = (settings.min_containers or 0) + (settings.buffer_containers or 0)
        if settings.max_containers is not None:
            warm_pool = min(warm_pool, settings.max_containers)
        return PoolState(
            ready=stats.num_total_runners,
            starting=0,
            desired=warm_pool,
            at=time.time(),
            backlog=stats.backlog,
        )

    @asynccontextmanager
    async def _talking_to_modal(self, action: str) -> AsyncIterator[None]:
        """Bound the whole exchange in time and turn client errors into actuator errors."""
        try:
            async with asyncio.timeout(self._timeout_s):
                yield
        except TimeoutError:
            raise Unavailable(
                f"{self._where}: could not {action}: no answer within {self._timeout_s:g} s"
            ) from None
        except modal.exception.NotFoundError as exc:
            self._function = None  # look it up again next time: the app may be redeployed
            raise TargetNotFound(f"{self._where}: not found ({exc})") from None
        except modal.exception.AuthError as exc:
            raise AuthenticationFailed(
                f"{self._where}: Modal rejected the token; check MODAL_TOKEN_ID and "
                f"MODAL_TOKEN_SECRET ({exc})"
            ) from None
        except modal.exception.PermissionDeniedError as exc:
            raise PermissionDenied(f"{self._where}: permission denied ({exc})") from None
        except _UNAVAILABLE as exc:
            raise Unavailable(f"{self._where}: could not {action}: {exc!r}") from None
        except modal.exception.Error as exc:
            raise ActuatorError(f"{self._where}: could not {action}: {exc!r}") from None


def _credentials() -> tuple[str, str]:
    token_id = modal.config.config.get("token_id")
    token_secret = modal.config.config.get("token_secret")
    if not token_id or not token_secret:
        raise AuthenticationFailed(
            "no Modal token: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (or a ~/.modal.toml profile)"
        )
    return token_id, token_secret
