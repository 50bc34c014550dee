"""Simulated capacity pools: a Kubernetes Deployment of vLLM pods and a Modal function.

They obey what the real pools do: start-up delays drawn from the configured distributions,
billing (Kubernetes per GPU-hour for a pod's whole life, Modal per second while a container
exists, warm idle time included), draining on scale-down, and for Modal its own
request-driven autoscaler around the warm-pool settings the policy sets.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from ..config.schema import KubernetesPool, ModalPool, Startup
from ..controller.types import PoolState
from .native import Replica

if TYPE_CHECKING:
    from .simulator import Simulation


def draw_startup(rng: np.random.Generator, startup: Startup) -> float:
    if startup.high == startup.low:
        return startup.low
    return float(rng.triangular(startup.low, startup.mode, startup.high))


class Server:
    """A pod or container: one vLLM engine plus its lifecycle and billing."""

    __slots__ = ("pool", "engine", "created_at", "ready_at", "ready", "draining", "ended_at",
                 "idle_since")

    def __init__(self, pool: Pool, created_at: float, ready_at: float):
        self.pool = pool
        self.engine = Replica(pool.sim, pool.sim.profile, owner=self)
        self.created_at = created_at
        self.ready_at = ready_at
        self.ready = False
        self.draining = False
        self.ended_at: float | None = None
        self.idle_since: float | None = None

    def billed_seconds(self, now: float) -> float:
        end = self.ended_at if self.ended_at is not None else now
        return max(end - self.created_at, 0.0)


class Pool:
    """What both pools share: servers, billing and the end of a server's life."""

    name = ""

    def __init__(self, sim: Simulation, price_per_server_second: float, gpus_per_server: int):
        self.sim = sim
        self.price = price_per_server_second
        self.gpus = gpus_per_server
        self.servers: list[Server] = []  # alive (starting, ready or draining)
        self.serving: list[Server] = []  # ready and not draining: the ones taking requests
        self.ended_seconds = 0.0  # billed seconds of servers already gone
        self.ended_busy = 0.0
        # Billing and busy time accrued during the warm-up, not counted in the results.
        self.uncounted_seconds = 0.0
        self.uncounted_busy = 0.0

    def _start_server(self, now: float, startup: Startup) -> Server:
        server = Server(self, now, now + draw_startup(self.sim.rng, startup))
        self.servers.append(server)
        self.sim.schedule(server.ready_at, self._on_ready, server)
        return server

    def warm_start(self, count: int, now: float) -> None:
        """Begin with `count` servers already up, as a pool that was running before the trace."""
        for _ in range(count):
            server = Server(self, now, now)
            self.servers.append(server)
            self._on_ready(now, server)

    def _on_ready(self, now: float, server: Server) -> None:
        if server.ended_at is None and not server.draining:
            server.ready = True
            self._start_serving(server)
            self.server_ready(server, now)

    def _start_serving(self, server: Server) -> None:
        self.serving.append(server)

    def _stop_serving(self, server: Server) -> None:
        self.serving.remove(server)

    def server_ready(self, server: Server, now: float) -> None:
        raise NotImplementedError

    def _end(self, server: Server, now: float) -> None:
        if server.ended_at is not None:
            return
        for req in server.engine.evict_all(now):
            self.sim.fail(req, now, "killed while draining")
        server.ended_at = now
        self.ended_seconds += server.billed_seconds(now)
        self.ended_busy += server.engine.busy_seconds(now)
        self.servers.remove(server)
        if server in self.serving:
            self._stop_serving(server)

    def billed_seconds(self, now: float) -> float:
        return self.ended_seconds + sum(s.billed_seconds(now) for s in self.servers)

    def busy_seconds(self, now: float) -> float:
        return self.ended_busy + sum(s.engine.busy_seconds(now) for s in self.servers)

    def start_counting(self, now: float) -> None:
        self.uncounted_seconds = self.billed_seconds(now)
        self.uncounted_busy = self.busy_seconds(now)

    def counted_seconds(self, now: float) -> float:
        return self.billed_seconds(now) - self.uncounted_seconds

    def counted_busy(self, now: float) -> float:
        return self.busy_seconds(now) - self.uncounted_busy

    def cost(self, now: float) -> float:
        return self.counted_seconds(now) * self.price

    def gpu_hours(self, now: float) -> float:
        return self.counted_seconds(now) * self.gpus / 3600

    def state(self, now: float) -> PoolState:
        ready = len(self.serving)
        starting = sum(1 for s in self.servers if not s.ready and not s.draining)
        return PoolState(ready=ready, starting=starting, desired=ready + starting, at=now)


class SimKubernetesPool(Pool):
    """A Deployment: the policy sets replicas; pods start slowly and drain on scale-down."""

    name = "kubernetes"

    def __init__(self, sim: Simulation, config: KubernetesPool):
        super().__init__(sim, config.price_per_gpu_hour * config.gpus_per_replica / 3600,
                         config.gpus_per_replica)
        self.config = config
        self.desired = 0
        # Requests held by each serving pod, in `serving` order: a least-connections
        # balancer's own count (each equals the pod's engine.load), kept so that the router's
        # pick, made for every request, is a scan of plain ints.
        self.in_flight: list[int] = []

    def scale(self, replicas: int, now: float) -> None:
        replicas = min(max(replicas, self.config.min_replicas), self.config.max_replicas)
        self.desired = replicas
        live = [s for s in self.servers if not s.draining]
        for _ in range(replicas - len(live)):
            self._start_server(now, self.config.startup_seconds)
        if replicas < len(live):
            self._remove(live, len(live) - replicas, now)

    def _remove(self, live: list[Server], count: int, now: float) -> None:
        # As a ReplicaSet does: not-ready pods go first (newest first), then the least busy.
        victims = sorted(live, key=lambda s: (s.ready, s.engine.load, -s.created_at))[:count]
        for server in victims:
            if not server.ready or server.engine.load == 0:
                self._end(server, now)
            else:
                server.draining = True
                self._stop_serving(server)
                self.sim.schedule(now + self.config.drain_seconds, self._drain_deadline, server)

    def warm_start(self, count: int, now: float) -> None:
        count = min(max(count, self.config.min_replicas), self.config.max_replicas)
        super().warm_start(count, now)
        self.desired = count

    def _drain_deadline(self, now: float, server: Server) -> None:
        self._end(server, now)

    def server_ready(self, server: Server, now: float) -> None:
        self.sim.router.capacity_added(now)

    def _start_serving(self, server: Server) -> None:
        super()._start_serving(server)
        self.in_flight.append(server.engine.load)

    def _stop_serving(self, server: Server) -> None:
        i = self.serving.index(server)
        del self.serving[i], self.in_flight[i]

    def send(self, i: int, req: int, now: float) -> None:
        """Hand a request to the i-th serving pod."""
        self.in_flight[i] += 1
        self.serving[i].engine.enqueue(req, now)

    def request_done(self, server: Server, now: float) -> None:
        if not server.draining:
            self.in_flight[self.serving.index(server)] -= 1
        elif server.engine.load == 0:
            self._end(server, now)

    def state(self, now: float) -> PoolState:
        base = super().state(now)
        return PoolState(base.ready, base.starting, self.desired, now)


class SimModalPool(Pool):
    """A Modal function: Modal's request-driven autoscaler within the warm-pool settings.

    Modal starts containers when inputs outnumber free slots (`target_inputs` each), keeps
    `buffer_containers` idle ones on top of the demand and never fewer than
    `min_containers`; a container idle for `scaledown_window` shuts down unless needed for
    those floors. Containers are billed from start to shutdown.
    """

    name = "modal"

    def __init__(self, sim: Simulation, config: ModalPool):
        super().__init__(sim, config.price_per_container_second, config.gpus_per_container)
        self.config = config
        self.min_containers = config.min_containers
        self.buffer_containers = config.buffer_containers
        self.target_inputs = min(config.target_inputs or config.max_inputs, config.max_inputs)
        self.backlog: deque[int] = deque()
        self.inputs: dict[Server, int] = {}

    def configure(self, min_containers: int | None, buffer_containers: int | None, now: float):
        if min_containers is not None:
            self.min_containers = min(max(min_containers, 0), self.config.max_containers)
        if buffer_containers is not None:
            self.buffer_containers = max(buffer_containers, 0)
        self._autoscale(now)
        window = self.config.scaledown_window_seconds
        for server in list(self.servers):
            if server.idle_since is not None and now - server.idle_since >= window:
                self._retire_if_surplus(server, now)

    def _wanted(self) -> int:
        demand = sum(self.inputs.values()) + len(self.backlog)
        needed = math.ceil(demand / self.target_inputs) + self.buffer_containers
        return min(max(needed, self.min_containers), self.config.max_containers)

    def _autoscale(self, now: float) -> None:
        for _ in range(self._wanted() - len(self.servers)):
            server = self._start_server(now, self.config.startup)
            self.inputs[server] = 0

    def submit(self, req: int, now: float) -> None:
        free = [s for s in self.serving if self.inputs[s] < self.config.max_inputs]
        if free:
            self._assign(min(free, key=self.inputs.__getitem__), req, now)
        else:
            self.backlog.append(req)
            self._autoscale(now)

    def _assign(self, server: Server, req: int, now: float) -> None:
        self.inputs[server] += 1
        server.idle_since = None
        self.sim.dispatch(req, server, now)

    def _pull_backlog(self, server: Server, now: float) -> None:
        while self.backlog and self.inputs[server] < self.config.max_inputs:
            req = self.backlog.popleft()
            if self.sim.timed_out(req, now):
                continue
            self._assign(server, req, now)

    def server_ready(self, server: Server, now: float) -> None:
        self.inputs.setdefault(server, 0)
        self._pull_backlog(server, now)
        if self.inputs[server] == 0:
            self._idle(server, now)

    def request_done(self, server: Server, now: float) -> None:
        self.inputs[server] -= 1
        self._pull_backlog(server, now)
        if self.inputs[server] == 0:
            self._idle(server, now)

    def _idle(self, server: Server, now: float) -> None:
        server.idle_since = now
        self.sim.schedule(now + self.config.scaledown_window_seconds, self._idle_check, server)

    def _idle_check(self, now: float, server: Server) -> None:
        """Still idle a full window later: shut down if surplus, else look again later."""
        window = self.config.scaledown_window_seconds
        if server.ended_at is None and server.idle_since is not None:
            if now - server.idle_since >= window - 1e-9 and not self._retire_if_surplus(server, now):
                self.sim.schedule(now + window, self._idle_check, server)

    def _retire_if_surplus(self, server: Server, now: float) -> bool:
        if server.ready and len(self.servers) > self._wanted():
            self._end(server, now)
            del self.inputs[server]
            return True
        return False

    def state(self, now: float) -> PoolState:
        """As Modal reports it (actuators/modal.py): every container, ready or starting, as
        ready; as desired, the warm pool set (not the containers the demand asks for)."""
        base = super().state(now)
        warm_pool = min(self.min_containers + self.buffer_containers, self.config.max_containers)
        return PoolState(base.total, 0, warm_pool, now, backlog=len(self.backlog))
