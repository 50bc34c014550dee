"""Sweep measurements made by the simulator's engine with a known profile: what a client of a
server that behaves exactly like the profile's model would measure, in the stages that
`vllm-autoscaler profile` runs (a prefill stage, then each concurrency)."""

from __future__ import annotations

import heapq
import itertools

import numpy as np

from vllm_autoscaler.controller.profile import ReplicaProfile
from vllm_autoscaler.simulations.engine import Replica
from vllm_autoscaler.simulations.profiling import PREFILL_STAGE_OUTPUT_TOKENS, Measurements


class ClosedLoopStage:
    """`concurrency` users on one engine, each sending its next request when the last ends;
    a request reaches the engine `overhead_s` after it is sent (an HTTP front end)."""

    def __init__(self, profile: ReplicaProfile, concurrency: int, duration_s: float,
                 lengths: list[tuple[int, int]], rng: np.random.Generator, overhead_s: float = 0.0):
        self.overhead_s = overhead_s
        self.duration_s, self.lengths, self.rng = duration_s, lengths, rng
        self.concurrency = concurrency
        self.prompt: list[int] = []
        self.output: list[int] = []
        self.sent: list[float] = []
        self.first: list[float] = []
        self.end: list[float] = []
        self.events: list = []  # (time, tie-breaker, callback, arg): the engine pushes to it
        self.seq = itertools.count()
        self.engine = Replica(self, profile)

    def schedule(self, time: float, callback, arg) -> None:
        heapq.heappush(self.events, (time, next(self.seq), callback, arg))

    def send(self, now: float) -> None:
        prompt, output = self.lengths[self.rng.integers(len(self.lengths))]
        req = len(self.prompt)
        self.prompt.append(prompt)
        self.output.append(output)
        self.sent.append(now)
        self.first.append(np.nan)
        self.end.append(np.nan)
        self.schedule(now + self.overhead_s, self.arrive, req)

    def arrive(self, time: float, req: int) -> None:
        self.engine.enqueue(req, time)

    def first_token(self, req: int, time: float) -> None:
        self.first[req] = time

    def finished(self, req: int, time: float, replica: Replica) -> None:
        self.end[req] = time
        if time < self.duration_s:
            self.send(time)

    def rejected(self, req: int, time: float, replica: Replica) -> None:
        raise AssertionError(f"request {req} rejected: prompt larger than the KV cache")

    def run(self, offset: float) -> list[tuple]:
        for _ in range(self.concurrency):
            self.send(0.0)
        while self.events:
            time, _, callback, arg = heapq.heappop(self.events)
            callback(time, arg)
        return [(s + offset, f + offset, e + offset, p, o, self.concurrency) for s, f, e, p, o in
                zip(self.sent, self.first, self.end, self.prompt, self.output)]


def sweep(profile: ReplicaProfile, concurrency=(1, 2, 4, 8, 16), duration_s: float = 20.0,
          lengths=((64, 32), (256, 64), (512, 16), (128, 128)), seed: int = 0,
          overhead_s: float = 0.0) -> Measurements:
    rng = np.random.default_rng(seed)
    rows, offset = [], 0.0
    prefill_stage = [(1, [(prompt, PREFILL_STAGE_OUTPUT_TOKENS) for prompt, _ in lengths])]
    for c, stage_lengths in prefill_stage + [(c, list(lengths)) for c in concurrency]:
        stage = ClosedLoopStage(profile, c, duration_s, stage_lengths, rng, overhead_s).run(offset)
        rows += stage
        offset = max(r[2] for r in stage) + 1.0
    return Measurements(*(np.array(column, dtype=float) for column in zip(*rows)))
