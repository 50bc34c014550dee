"""A local Modal control plane that the real `modal` client talks to over gRPC.

It answers the RPCs an autoscaler uses (function lookup, autoscaler settings read/update,
current stats) the way Modal does, checks the token the client sends, and answers every
other RPC with UNIMPLEMENTED. Tests deploy functions, set their stats, inject faults
(error statuses, slow answers) and read back every request the client sent.

The server runs in a thread of its own with its own event loop (`serve_in_thread`), so a
test may drive it from the sync `modal` API or from any event loop.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from google.protobuf.message import Message
from grpclib import GRPCError, Status
from grpclib.server import Server, Stream
from modal_proto import api_pb2
from modal_proto.api_grpc import ModalClientBase

VALID_TOKEN_ID = "ak-emulator"
VALID_TOKEN_SECRET = "as-emulator-secret"


@dataclass
class DeployedFunction:
    """One function of a deployed app: its settings as deployed, runtime overrides, stats."""

    app: str
    name: str
    function_id: str
    static_settings: api_pb2.AutoscalerSettings
    overrides: api_pb2.AutoscalerSettings = field(default_factory=api_pb2.AutoscalerSettings)
    stats: api_pb2.FunctionStats = field(default_factory=api_pb2.FunctionStats)

    @property
    def settings(self) -> api_pb2.AutoscalerSettings:
        """Effective settings: overrides win over the deployed values, field by field."""
        effective = api_pb2.AutoscalerSettings()
        effective.CopyFrom(self.static_settings)
        effective.MergeFrom(self.overrides)  # merges only the fields set in the overrides
        return effective


@dataclass
class Fault:
    """Answer `times` matching requests (None: all) with `status` after `delay` seconds."""

    status: Status | None
    times: int | None
    delay: float = 0.0
    rpc: str | None = None  # None: any RPC

    def matches(self, rpc: str) -> bool:
        return (self.times is None or self.times > 0) and self.rpc in (None, rpc)


@dataclass(frozen=True)
class Received:
    """One request as the server received it."""

    rpc: str
    request: Message
    token_id: str | None
    at: float = 0.0  # time.monotonic() when it arrived


def _unimplemented(rpc: str):
    async def handler(self: ModalControlPlane, stream: Stream) -> None:
        self._record(rpc, await stream.recv_message(), stream.metadata)
        raise GRPCError(Status.UNIMPLEMENTED, f"{rpc} is not emulated")

    handler.__name__ = rpc
    return handler


def _answer_unimplemented_for_the_rest(cls: type) -> type:
    for rpc in cls.__abstractmethods__:
        setattr(cls, rpc, _unimplemented(rpc))
    return abc.update_abstractmethods(cls)


@_answer_unimplemented_for_the_rest
class ModalControlPlane(ModalClientBase):
    """In-memory registry of deployed functions behind Modal's gRPC API."""

    def __init__(
        self, token_id: str = VALID_TOKEN_ID, token_secret: str = VALID_TOKEN_SECRET
    ) -> None:
        self.token = (token_id, token_secret)
        self._functions: dict[tuple[str, str], DeployedFunction] = {}
        self._faults: list[Fault] = []
        self._received: list[Received] = []
        self._ids = itertools.count(1)
        # Tests change state from their thread while the server thread answers.
        self._lock = threading.Lock()

    # --- what tests set up ---------------------------------------------------------------

    def deploy(
        self,
        app: str,
        name: str,
        *,
        min_containers: int = 0,
        max_containers: int | None = None,
        buffer_containers: int = 0,
        scaledown_window: int = 60,
    ) -> DeployedFunction:
        """Deploy (or redeploy) a function; redeploying keeps its id and wipes overrides."""
        static = api_pb2.AutoscalerSettings(
            min_containers=min_containers,
            max_containers=max_containers or 0,  # 0: no limit, as Modal reports it
            buffer_containers=buffer_containers,
            scaledown_window=scaledown_window,
        )
        with self._lock:
            existing = self._functions.get((app, name))
            function_id = existing.function_id if existing else f"fu-{next(self._ids):06d}"
            stats = existing.stats if existing else api_pb2.FunctionStats()
            deployed = DeployedFunction(app, name, function_id, static, stats=stats)
            self._functions[(app, name)] = deployed
            return deployed

    def redeploy(self, app: str) -> None:
        """Redeploy an app as it was: every function keeps its id and loses its overrides."""
        with self._lock:
            for function in self._functions.values():
                if function.app == app:
                    function.overrides = api_pb2.AutoscalerSettings()

    def undeploy(self, app: str) -> None:
        """Stop an app: its functions are gone (a later deploy gives them new ids)."""
        with self._lock:
            for key in [key for key in self._functions if key[0] == app]:
                del self._functions[key]

    def function(self, app: str, name: str) -> DeployedFunction:
        with self._lock:
            return self._functions[(app, name)]

    def set_stats(
        self,
        app: str,
        name: str,
        *,
        backlog: int = 0,
        containers: int = 0,
        running_inputs: int = 0,
        input_headroom: int = 0,
    ) -> None:
        with self._lock:
            self._functions[(app, name)].stats = api_pb2.FunctionStats(
                backlog=backlog,
                num_total_tasks=containers,
                num_running_inputs=running_inputs,
                input_headroom=input_headroom,
            )

    def fail(self, status: Status, *, times: int | None = None, rpc: str | None = None) -> None:
        """Answer the next `times` requests (None: all, until `clear_faults`) with `status`."""
        with self._lock:
            self._faults.append(Fault(status, times, rpc=rpc))

    def slow_down(
        self, seconds: float, *, times: int | None = None, rpc: str | None = None
    ) -> None:
        """Delay the answer to the next `times` requests (None: all) by `seconds`."""
        with self._lock:
            self._faults.append(Fault(None, times, delay=seconds, rpc=rpc))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def received(self, rpc: str | None = None) -> list[Received]:
        """Requests received so far, oldest first (only those of `rpc` if given)."""
        with self._lock:
            return [r for r in self._received if rpc in (None, r.rpc)]

    # --- the emulated RPCs ----------------------------------------------------------------

    async def FunctionGet(self, stream: Stream) -> None:
        await self._answer(stream, "FunctionGet", self._function_get)

    async def FunctionGetSchedulingParams(self, stream: Stream) -> None:
        await self._answer(stream, "FunctionGetSchedulingParams", self._get_scheduling_params)

    async def FunctionUpdateSchedulingParams(self, stream: Stream) -> None:
        await self._answer(stream, "FunctionUpdateSchedulingParams", self._update_scheduling_params)

    async def FunctionGetCurrentStats(self, stream: Stream) -> None:
        await self._answer(stream, "FunctionGetCurrentStats", self._current_stats)

    def _function_get(self, request: api_pb2.FunctionGetRequest) -> api_pb2.FunctionGetResponse:
        if not any(app == request.app_name for app, _ in self._functions):
            raise GRPCError(Status.NOT_FOUND, f"App '{request.app_name}' not found")
        function = self._functions.get((request.app_name, request.object_tag))
        if function is None:
            raise GRPCError(
                Status.NOT_FOUND,
                f"Function '{request.object_tag}' not found in app '{request.app_name}'",
            )
        # The client parses `function.ranked_functions` when it later updates the autoscaler.
        ranked = api_pb2.FunctionData.RankedFunction(
            rank=0, function=api_pb2.Function(function_name=function.name)
        )
        return api_pb2.FunctionGetResponse(
            function_id=function.function_id,
            handle_metadata=api_pb2.FunctionHandleMetadata(
                function_name=function.name,
                function_type=api_pb2.Function.FUNCTION_TYPE_FUNCTION,
            ),
            function=api_pb2.FunctionData(
                function_name=function.name,
                ranked_functions=[ranked],
                autoscaler_settings=function.static_settings,
            ),
        )

    def _get_scheduling_params(
        self, request: api_pb2.FunctionGetSchedulingParamsRequest
    ) -> api_pb2.FunctionGetSchedulingParamsResponse:
        function = self._by_id(request.function_id)
        return api_pb2.FunctionGetSchedulingParamsResponse(
            autoscaler_configuration=api_pb2.AutoscalerConfiguration(
                settings=function.settings,
                static_settings=function.static_settings,
                override_settings=function.overrides,
            )
        )

    def _update_scheduling_params(
        self, request: api_pb2.FunctionUpdateSchedulingParamsRequest
    ) -> api_pb2.FunctionUpdateSchedulingParamsResponse:
        function = self._by_id(request.function_id)
        function.overrides.MergeFrom(request.settings)
        return api_pb2.FunctionUpdateSchedulingParamsResponse(current_settings=function.settings)

    def _current_stats(
        self, request: api_pb2.FunctionGetCurrentStatsRequest
    ) -> api_pb2.FunctionStats:
        return self._by_id(request.function_id).stats

    def _by_id(self, function_id: str) -> DeployedFunction:
        for function in self._functions.values():
            if function.function_id == function_id:
                return function
        raise GRPCError(Status.NOT_FOUND, f"Function id '{function_id}' not found")

    # --- what every RPC goes through --------------------------------------------------------

    async def _answer(self, stream: Stream, rpc: str, handle) -> None:
        request = await stream.recv_message()
        self._record(rpc, request, stream.metadata)
        await self._inject_fault(rpc)
        self._authenticate(stream.metadata)
        with self._lock:
            reply = handle(request)
        await stream.send_message(reply)

    def _record(self, rpc: str, request: Message, metadata) -> None:
        with self._lock:
            self._received.append(
                Received(rpc, request, metadata.get("x-modal-token-id"), time.monotonic()))

    async def _inject_fault(self, rpc: str) -> None:
        with self._lock:
            fault = next((f for f in self._faults if f.matches(rpc)), None)
            if fault is not None and fault.times is not None:
                fault.times -= 1
        if fault is None:
            return
        await asyncio.sleep(fault.delay)
        if fault.status is not None:
            raise GRPCError(fault.status, f"injected {fault.status.name}")

    def _authenticate(self, metadata) -> None:
        sent = (metadata.get("x-modal-token-id"), metadata.get("x-modal-token-secret"))
        if sent != self.token:
            raise GRPCError(Status.UNAUTHENTICATED, "Invalid token id or secret")


@dataclass(frozen=True)
class RunningControlPlane:
    plane: ModalControlPlane
    url: str


@contextmanager
def serve_in_thread(plane: ModalControlPlane) -> Iterator[RunningControlPlane]:
    """Serve `plane` on 127.0.0.1 (a free port) from a thread with its own event loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="modal-control-plane", daemon=True)
    thread.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def start() -> Server:
        server = Server([plane])  # grpclib binds the loop it is created in: create it here
        await server.start(sock=sock)
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield RunningControlPlane(plane, f"http://127.0.0.1:{port}")
    finally:

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        sock.close()
