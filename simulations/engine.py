"""A vLLM replica as a continuous-batching engine, simulated event by event.

What vLLM's scheduler does each engine step: every running sequence gets one decode token,
and what is left of the `max_num_batched_tokens` budget goes to prompt chunks of admitted
requests, first come first served (chunked prefill). The KV cache is in blocks of
`kv_block_size` tokens (vLLM's allocator: a sequence of n tokens holds ceil(n / block) blocks,
and one block of the cache is vLLM's null block). A waiting request is admitted when fewer than
`max_num_seqs` are running and there are free blocks for its whole prompt, beyond the
profile's watermark when others run (vLLM V1 checks the full prompt); when a step needs a
block and none is free, the most recently admitted sequence (prefilling or decoding) is
preempted and recomputed later.

To stay fast, steps that carry prefill are simulated one by one (that is where TTFT is made),
while stretches of pure decode are advanced in one go: between two events the batch is fixed,
so every sequence gains one token per step of known length (a "virtual token clock" `v`).
A decoding sequence's context is `a + v` for a constant `a`, so the blocks it holds,
ceil((a + v) / block), depend on `v` and on `a mod block` alone: the residues, kept sorted,
give the blocks the batch holds, and when the next one is needed, in O(log batch).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ..controller.profile import ReplicaProfile

# Tolerance in tokens of the virtual clock. Far above float rounding (a clock at 1e5 tokens
# and event times of days), else an event due "in 1e-11 tokens" lands at the same instant
# and the clock never moves (a Zeno loop).
EPS = 1e-6
# frac(n * phi) for n = 1, 2, ... spreads over [0, 1) as evenly as a sequence can.
GOLDEN_RATIO_FRACTION = 0.6180339887498949


class EngineHost(Protocol):
    """What a replica needs from the simulation around it."""

    prompt: list[int]
    output: list[int]
    # The event heap: entries (time, tie-breaker from `seq`, callback, arg); callback(time, arg)
    # runs at that time. Replicas push to it directly.
    events: list[tuple[float, int, Callable[[float, Any], None], Any]]
    seq: Iterator[int]

    def first_token(self, req: int, time: float) -> None: ...
    def finished(self, req: int, time: float, replica: Replica) -> None: ...
    def rejected(self, req: int, time: float, replica: Replica) -> None: ...


class Replica:
    """One vLLM engine. `enqueue` hands it a request; the host's clock drives its events."""

    __slots__ = (
        "host", "profile", "waiting", "prefilling", "prefill_left", "prefill_total",
        "step_prefill", "decoding", "finish_heap", "generated", "v", "v_time",
        "step_s", "in_step", "ctx_base", "version", "load", "busy_since", "busy_s",
        "kv_cap", "block", "blocks", "watermark", "prefill_blocks", "residues", "block_base", "v_full",
        "budget", "owner", "max_seqs", "c_base", "c_seq", "c_ctx",
        "c_prefill", "events", "seq", "on_step_end", "on_decode", "overhead", "overheads", "front_end", "on_front_end",
    )  # fmt: skip

    def __init__(self, host: EngineHost, profile: ReplicaProfile, owner: object = None):
        self.host = host
        self.owner = owner  # the pod or container this engine runs in
        self.profile = profile
        self.block = profile.kv_block_size
        self.blocks = profile.kv_cache_tokens // self.block - 1  # usable: less vLLM's null block
        self.kv_cap = self.blocks * self.block  # tokens the usable blocks hold
        # Blocks kept free when admitting beside running requests (vLLM: of all blocks).
        self.watermark = int(profile.kv_watermark * (profile.kv_cache_tokens // self.block))
        self.budget = profile.max_num_batched_tokens
        self.max_seqs = profile.max_num_seqs
        # The step-time coefficients as plain floats: this is the simulator's hot path.
        self.c_base, self.c_seq = profile.decode_base_s, profile.decode_per_seq_s
        self.c_ctx, self.c_prefill = profile.decode_per_context_token_s, profile.prefill_per_token_s
        # The HTTP front end's time per request (vLLM's API server, beside the engine): a
        # request reaches the engine this long after it arrived.
        self.overhead = profile.request_overhead_s
        # Its spread, if measured: request `req` takes the quantile at level frac(req * phi),
        # a sequence that covers the levels evenly and needs no random state.
        self.overheads: list[float] = list(profile.request_overhead_quantiles_s)
        self.front_end: set[int] = set()  # requests in it
        # Events go straight onto the host's heap: up to three per request, where a call to a
        # host method per event costs. Callbacks are bound once, not an allocation per event.
        self.events, self.seq = host.events, host.seq
        self.on_step_end = self._on_step_end
        self.on_decode = self._on_decode
        self.on_front_end = self._on_front_end
        self.waiting: deque[int] = deque()  # not yet admitted
        self.prefilling: deque[int] = deque()  # admitted, prompt (or recompute) not done
        self.prefill_left: dict[int, int] = {}
        self.prefill_total = 0  # sum of prefill_left
        self.step_prefill = 0  # prompt tokens computed by the step under way
        # req -> (finish v, its share of ctx_base, v when it started decoding, tokens generated
        # then); insertion order = admission order.
        self.decoding: dict[int, tuple[float, float, float, int]] = {}
        self.finish_heap: list[tuple[float, int]] = []  # (finish v, req) of `decoding`, exactly
        self.generated: dict[int, int] = {}  # tokens of preempted requests, kept for recompute
        self.v = 0.0  # decode tokens per running sequence since start (the virtual clock)
        self.v_time = 0.0  # when `v` was last brought up to date
        self.step_s = 0.0  # length of the current decode-only step (fluid mode)
        self.in_step = False  # a prefill-carrying step is under way
        # KV blocks of admitted requests still in prefill: their whole prompt, from admission.
        self.prefill_blocks = 0
        self.ctx_base = 0.0  # decoding context = ctx_base + len(decoding) * v
        # Blocks of the decoding batch (see _held): a sequence of context a + v needs
        # floor((a - 1 + v) / block) + 1 blocks for its next step; with a - 1 = k * block + r
        # (0 <= r < block), `residues` holds every r, sorted, and `block_base` the sum of k.
        self.residues: list[float] = []
        self.block_base = 0
        # Where the plan under way has the batch run out of blocks (see _v_full); -1 while a
        # prefill step is under way (its end may cross a block boundary: check then).
        self.v_full = -1.0
        self.version = 0  # invalidates events scheduled before a state change
        self.load = 0  # requests held (waiting + running)
        self.busy_since: float | None = None
        self.busy_s = 0.0

    # ---- what the outside sees -------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def kv_used(self, now: float) -> float:
        """Tokens the blocks in use hold (of `kv_cap`)."""
        self._advance(now)
        return (self.prefill_blocks + self._held()) * self.block

    def enqueue(self, req: int, now: float) -> None:
        self.load += 1
        overhead = self._overhead(req) if self.overheads else self.overhead
        if overhead > 0:
            self.front_end.add(req)
            heapq.heappush(self.events, (now + overhead, next(self.seq), self.on_front_end, req))
            return
        self._to_engine(req, now)

    def _overhead(self, req: int) -> float:
        q = self.overheads
        position = (req * GOLDEN_RATIO_FRACTION) % 1.0 * (len(q) - 1)
        i = int(position)
        return q[i] if i + 1 == len(q) else q[i] + (q[i + 1] - q[i]) * (position - i)

    def _on_front_end(self, now: float, req: int) -> None:
        if req in self.front_end:  # else evicted meanwhile
            self.front_end.remove(req)
            self._to_engine(req, now)

    def _to_engine(self, req: int, now: float) -> None:
        self._advance(now)
        if self.busy_since is None:
            self.busy_since = now
        self.waiting.append(req)
        if not self.in_step:
            self._admit(now)
            self._plan(now)

    def set_speed(self, now: float, factor: float) -> None:
        """Steps take `factor` times the profile's time from now on (a machine whose speed
        drifts, as measured: `fidelity --engine-log`); a step under way keeps its length."""
        self._advance(now)
        p = self.profile
        self.c_base, self.c_seq = p.decode_base_s * factor, p.decode_per_seq_s * factor
        self.c_ctx, self.c_prefill = p.decode_per_context_token_s * factor, p.prefill_per_token_s * factor
        if not self.in_step:
            self._plan(now)

    def evict_all(self, now: float) -> list[int]:
        """Drop every request held (the pod is killed); returns them."""
        held = list(self.front_end) + list(self.waiting) + list(self.prefilling) + list(self.decoding)
        self.front_end.clear()
        self.waiting.clear()
        self.prefilling.clear()
        self.prefill_total = 0
        self.decoding.clear()
        self.finish_heap.clear()
        self.residues.clear()
        self.block_base = 0
        self.prefill_blocks = 0
        self.prefill_left.clear()
        self.load = 0
        self.version += 1
        self._mark_idle(now)
        return held

    # ---- the engine ------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        """Bring the virtual clock up to `now` during a decode-only stretch."""
        if not self.in_step and self.decoding and now > self.v_time:
            self.v += (now - self.v_time) / self.step_s
        self.v_time = now

    def _held(self) -> int:
        """KV blocks the decoding batch needs for its next step, at the virtual clock `v`
        (plus EPS: a sequence due a block within EPS holds it already): the sum over sequences
        of floor((k * block + r + v) / block) + 1, that is, with v + EPS = q * block + u,
        block_base + n * (q + 1) + the number of residues r >= block - u."""
        block, x = self.block, self.v + EPS
        q = x // block
        u = x - q * block
        n = len(self.residues)
        return self.block_base + n * (int(q) + 1) + n - bisect_left(self.residues, block - u)

    def _admit(self, now: float) -> None:
        host, waiting, prefilling = self.host, self.waiting, self.prefilling
        if len(prefilling) + len(self.decoding) >= self.max_seqs:
            return
        block = self.block
        # The decoding batch holds at most context / block + batch blocks: the exact count
        # (a bisect) only when that bound leaves too few free.
        batch = len(self.decoding)
        free = self.blocks - self.prefill_blocks
        exact = not batch
        if batch:
            free -= int((self.ctx_base + batch * self.v) / block) + batch + 1
        while waiting and len(prefilling) + len(self.decoding) < self.max_seqs:
            req = waiting[0]
            need = host.prompt[req] + self.generated.get(req, 0)
            need_blocks = (need + block - 1) // block
            if need_blocks > self.blocks:  # can never fit: vLLM rejects it
                waiting.popleft()
                self.load -= 1
                host.rejected(req, now, self)
                continue
            keep = self.watermark if prefilling or batch else 0
            if need_blocks + keep > free:
                if exact:
                    break
                free, exact = self.blocks - self.prefill_blocks - self._held(), True
                if need_blocks + keep > free:
                    break
            waiting.popleft()
            prefilling.append(req)
            self.prefill_left[req] = need
            self.prefill_total += need
            self.prefill_blocks += need_blocks
            free -= need_blocks

    def _plan(self, now: float) -> None:
        """Start the next step if there is prefill to do, else schedule the next decode event."""
        self.version += 1
        batch = len(self.decoding)
        context = self.ctx_base + batch * self.v
        # ReplicaProfile.step_seconds, inlined.
        decode_s = self.c_base + self.c_seq * batch + self.c_ctx * context
        if self.prefilling:
            # What is left of the token budget after decode goes to prompts in admission
            # order (chunked prefill); only the total matters until the step ends.
            # (Comparisons rather than min/max: builtin calls cost on this path.)
            free = self.budget - batch
            prefill = self.prefill_total if self.prefill_total <= free else free if free > 0 else 0
            self.step_prefill = prefill
            self.in_step = True
            self.v_full = -1.0
            step = decode_s + self.c_prefill * prefill
            heapq.heappush(self.events, (now + step, next(self.seq), self.on_step_end, self.version))
        elif batch:
            self.step_s = decode_s
            v_next = self.finish_heap[0][0]
            # The batch crosses at most batch * (dv / block + 1) block boundaries in dv
            # tokens, and holds at most context / block + batch blocks: the cache cannot run
            # short before `soonest`. The exact point (bisects) only when that is before v_next.
            spare = self.blocks - self.prefill_blocks - context / self.block - batch  # blocks, at least
            soonest = self.v + self.block * ((spare + 1) / batch - 1)
            if soonest < v_next:
                soonest = self._v_full(batch)
                if soonest < v_next:
                    v_next = soonest
            self.v_full = soonest  # _continue checks the blocks from there on
            when = now + (v_next - self.v) * decode_s
            heapq.heappush(self.events, (when, next(self.seq), self.on_decode, self.version))
        else:
            self._mark_idle(now)

    def _v_full(self, batch: int) -> float:
        """The virtual clock at which the batch needs one block more than is free: the
        (free + 1)-th block boundary its sequences cross from now on. Sequence of residue r
        crosses one at u = block - r (mod block), each once per `block` steps: those with
        r < block - u first, largest r first, then every sequence in that order again."""
        block, residues = self.block, self.residues
        x = self.v + EPS  # as in _held: EPS on, the next crossing is more than EPS away
        q = x // block
        u = x - q * block
        j = bisect_left(residues, block - u)  # residues not yet crossing this round
        free = self.blocks - self.prefill_blocks - (self.block_base + batch * (int(q) + 1) + batch - j)
        if free < 0:
            return self.v
        rounds = free // batch
        i = j - 1 - (free - rounds * batch)
        if i >= 0:
            return x + (block - u - residues[i]) + rounds * block
        return x + (2 * block - u - residues[i + batch]) + rounds * block

    def _on_step_end(self, now: float, version: int) -> None:
        if version != self.version:
            return
        self.in_step = False
        self.v_time = now
        if self.decoding:
            self.v += 1.0
        self._prefill_progress(self.step_prefill, now)
        self._continue(now)

    def _prefill_progress(self, tokens: int, now: float) -> None:
        """Hand a step's prompt tokens to the prefilling requests, head first: every one but
        the last finishes its prompt."""
        self.prefill_total -= tokens
        prefill_left, prefilling = self.prefill_left, self.prefilling
        while tokens:
            req = prefilling[0]
            left = prefill_left[req]
            if left > tokens:
                prefill_left[req] = left - tokens
                return
            tokens -= left
            self._prefill_done(req, now)

    def _on_decode(self, now: float, version: int) -> None:
        if version != self.version:
            return
        # _advance, inlined: a live decode event is always within a decode-only stretch.
        self.v += (now - self.v_time) / self.step_s
        self.v_time = now
        self._continue(now)

    def _continue(self, now: float) -> None:
        """After a step or decode event: retire finished sequences, make room in the KV
        cache, admit what now fits, and plan what comes next."""
        heap = self.finish_heap
        if heap and heap[0][0] <= self.v + EPS:
            self._finish_due(now)
        # Blocks run short only where the plan said, or after a prefill step (v_full -1); and
        # only if the bound of context / block + batch blocks does not fit (else no bisect).
        batch = len(self.decoding)
        if (batch and self.v + EPS >= self.v_full
                and self.prefill_blocks + (self.ctx_base + batch * self.v) / self.block + batch > self.blocks
                and self.prefill_blocks + self._held() > self.blocks):  # fmt: skip
            self._relieve_kv()
        if self.waiting:
            self._admit(now)
        self._plan(now)

    def _prefill_done(self, req: int, now: float) -> None:
        """The step that finishes a prompt also samples the request's next token."""
        self.prefilling.popleft()  # budget goes to the head first, so prompts finish in order
        del self.prefill_left[req]
        host = self.host
        generated = self.generated.pop(req, 0)
        prefilled = host.prompt[req] + generated
        block = self.block
        self.prefill_blocks -= (prefilled + block - 1) // block
        if not generated:
            host.first_token(req, now)
        generated += 1
        left = host.output[req] - generated
        if left <= 0:
            self._release(req, now)
            return
        v = self.v
        finish_v = v + left
        # Context of this sequence at virtual time v': prefilled + 1 + (v' - v).
        ctx = prefilled + 1 - v
        self.ctx_base += ctx
        self.decoding[req] = (finish_v, ctx, v, generated)
        heapq.heappush(self.finish_heap, (finish_v, req))
        # Its share of block_base and its residue: ctx - 1 = k * block + r, 0 <= r < block
        # (the same floats every time for the same ctx: _forget_blocks finds it again).
        k = (ctx - 1) // block
        r = ctx - 1 - k * block
        if r >= block:  # float rounding
            k, r = k + 1, r - block
        self.block_base += int(k)
        insort(self.residues, r if r > 0.0 else 0.0)

    def _forget_blocks(self, ctx: float) -> None:
        """Take a sequence that leaves the decoding batch out of the block count."""
        block = self.block
        k = (ctx - 1) // block
        r = ctx - 1 - k * block
        if r >= block:
            k, r = k + 1, r - block
        self.block_base -= int(k)
        residues = self.residues
        del residues[bisect_left(residues, r if r > 0.0 else 0.0)]

    def _finish_due(self, now: float) -> None:
        heap, decoding = self.finish_heap, self.decoding
        while heap and heap[0][0] <= self.v + EPS:
            req = heapq.heappop(heap)[1]
            ctx = decoding.pop(req)[1]
            self.ctx_base -= ctx
            self._forget_blocks(ctx)
            self._release(req, now)

    def _relieve_kv(self) -> None:
        """The next step needs more blocks than the cache has: preempt the most recently
        admitted sequence (vLLM's recompute preemption of the last of its running list: a
        request still in prefill, else the newest decoding one) until it fits; each goes back
        to the head of the queue and starts its prefill over."""
        block = self.block
        while self.decoding and self.prefill_blocks + self._held() > self.blocks:
            if self.prefilling:
                req = self.prefilling.pop()  # admitted last: prefill is first come first served
                self.prefill_total -= self.prefill_left.pop(req)
                self.prefill_blocks -= (self.host.prompt[req] + self.generated.get(req, 0) + block - 1) // block
                self.waiting.appendleft(req)
                continue
            req, (finish_v, ctx, v_start, generated) = self.decoding.popitem()  # the newest
            self.ctx_base -= ctx
            self._forget_blocks(ctx)
            # Preemption is rare: taking its entry out of the heap keeps the heap exact, so
            # the hot paths never meet a stale entry.
            self.finish_heap.remove((finish_v, req))
            heapq.heapify(self.finish_heap)
            self.generated[req] = generated + int(self.v - v_start)
            self.waiting.appendleft(req)

    def _release(self, req: int, now: float) -> None:
        self.load -= 1
        self.host.finished(req, now, self)

    def _mark_idle(self, now: float) -> None:
        if self.busy_since is not None:
            self.busy_s += now - self.busy_since
            self.busy_since = None

    def busy_seconds(self, now: float) -> float:
        return self.busy_s + (now - self.busy_since if self.busy_since is not None else 0.0)
