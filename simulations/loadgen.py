"""Load against a live OpenAI-compatible vLLM endpoint, and what its /metrics say.

Every request is a streamed completion of exact length: the prompt is a list of token ids
(so its length is exact whatever the tokenizer does with text) drawn at random from the
model's own vocabulary (so that no two prompts share a prefix the server could cache), and
`ignore_eos` with `max_tokens` fixes the output length. Times are `time.perf_counter()`
seconds as seen by this client: a request is *sent*, streams its *first* token, *ends*. Only
those three are used: vLLM sends the first token at once, but may send the others in batches
(`--stream-interval`, or when its HTTP front end falls behind the engine).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from .traces import Trace

# Tokenized by the server to learn ids of ordinary tokens of its model (any text would do).
VOCABULARY_SAMPLE = (
    "The quick brown fox jumps over the lazy dog while seven engineers measure how long a "
    "language model takes to answer: prompts, tokens, batches, queues and caches, in seconds, "
    "minutes or hours. Kubernetes pods and Modal containers scale up, then down again!"
)
REQUEST_TIMEOUT_S = 600.0
HELD_BACK_SHARE = 0.01  # of a request's life: its first token came this close to its end


class EndpointError(RuntimeError):
    """The endpoint cannot be measured; the message says what it answered."""


@dataclass(frozen=True)
class Endpoint:
    url: str
    model: str
    max_model_len: int
    token_ids: np.ndarray  # ordinary tokens of the model, to build prompts from


@dataclass(frozen=True)
class Outcome:
    sent: float
    first: float  # NaN when no token came
    end: float
    prompt: int
    output: int  # tokens the server says it generated
    error: str | None = None


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__  # a timeout has no message


def session() -> aiohttp.ClientSession:
    # No connection limit: a cap here would queue requests in the client, not in vLLM. Idle
    # connections are let go before vLLM closes them (see metrics.scrape.IDLE_CONNECTION_S).
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
    )


async def _json(client: aiohttp.ClientSession, method: str, url: str, **kwargs) -> dict:
    try:
        async with client.request(method, url, **kwargs) as response:
            if response.status != 200:
                raise EndpointError(f"{method} {url}: HTTP {response.status}: {(await response.text())[:300]}")
            return await response.json()
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        raise EndpointError(f"{method} {url}: {_why(exc)}") from exc


async def discover(client: aiohttp.ClientSession, url: str, model: str | None = None) -> Endpoint:
    """The served model (the only one, or `model`), its context length and vocabulary."""
    url = url.rstrip("/")
    served = (await _json(client, "GET", f"{url}/v1/models")).get("data") or []
    names = [m.get("id") for m in served]
    chosen = next((m for m in served if m.get("id") == model), None) if model else (served or [None])[0]
    if chosen is None:
        raise EndpointError(f"{url}/v1/models serves {names}; pass --model with one of them"
                            if model or not names else f"{url}/v1/models lists no model")
    if not isinstance(chosen.get("max_model_len"), int):
        raise EndpointError(f"{url}/v1/models gives no max_model_len for {chosen['id']!r} (not vLLM?)")
    tokens = await _json(client, "POST", f"{url}/tokenize",
                         json={"model": chosen["id"], "prompt": VOCABULARY_SAMPLE})
    ids = np.unique(np.asarray(tokens.get("tokens") or [], dtype=np.int64))
    if len(ids) < 8:
        raise EndpointError(f"{url}/tokenize gave {len(ids)} distinct tokens for a sample text")
    return Endpoint(url, chosen["id"], chosen["max_model_len"], ids)


def fit_lengths(prompt: np.ndarray, output: np.ndarray, max_model_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Lengths the server can take: output at most a quarter of the context, the prompt the rest."""
    output = np.clip(output, 1, max(max_model_len // 4, 1))
    return np.clip(prompt, 1, max_model_len - output), output


def first_token_held_back(sent: np.ndarray, first: np.ndarray, end: np.ndarray,
                          output: np.ndarray) -> np.ndarray:
    """Requests whose first token came with their last: vLLM's front end, short of CPU, held
    the stream back (their TTFT is then the whole request, not the engine's first step)."""
    return (output >= 2) & (end - first < HELD_BACK_SHARE * (end - sent))


class LoadClient:
    def __init__(self, client: aiohttp.ClientSession, endpoint: Endpoint, seed: int):
        self.client = client
        self.endpoint = endpoint
        self.rng = np.random.default_rng(seed)

    async def complete(self, prompt_tokens: int, output_tokens: int) -> Outcome:
        body = {
            "model": self.endpoint.model,
            "prompt": self.rng.choice(self.endpoint.token_ids, prompt_tokens).tolist(),
            "max_tokens": output_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
        sent = time.perf_counter()
        first, generated = float("nan"), 0
        try:
            async with self.client.post(f"{self.endpoint.url}/v1/completions", json=body) as response:
                if response.status != 200:
                    error = f"HTTP {response.status}: {(await response.text())[:200]}"
                    return Outcome(sent, first, time.perf_counter(), prompt_tokens, 0, error)
                async for line in response.content:
                    if not line.startswith(b"data: {"):
                        continue
                    if first != first and b'"text"' in line:  # NaN: none yet
                        first = time.perf_counter()
                    if b'"usage":{' in line:
                        generated = _completion_tokens(line)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return Outcome(sent, first, time.perf_counter(), prompt_tokens, generated, _why(exc))
        end = time.perf_counter()
        error = None if generated == output_tokens else f"{generated} of {output_tokens} tokens generated"
        return Outcome(sent, first, end, prompt_tokens, generated, error)

    async def closed_loop(self, concurrency: int, duration_s: float,
                          draw: Callable[[], tuple[int, int]], pause_s: float = 0.0) -> list[Outcome]:
        """`concurrency` users, each sending its next request `pause_s` after the last ends, for
        `duration_s`."""
        deadline = time.perf_counter() + duration_s

        async def user() -> list[Outcome]:
            done = []
            while time.perf_counter() < deadline:
                done.append(await self.complete(*draw()))
                if pause_s:
                    await asyncio.sleep(pause_s)
            return done

        return [o for outcomes in await asyncio.gather(*(user() for _ in range(concurrency))) for o in outcomes]

    async def replay(self, trace: Trace) -> list[Outcome]:
        """Each request of the trace sent at its arrival time (open loop), in real time."""
        start = time.perf_counter()

        async def send(i: int) -> Outcome:
            await asyncio.sleep(max(start + trace.arrival_s[i] - time.perf_counter(), 0.0))
            return await self.complete(int(trace.prompt_tokens[i]), int(trace.output_tokens[i]))

        return list(await asyncio.gather(*(send(i) for i in range(len(trace)))))


def _completion_tokens(line: bytes) -> int:
    return int((json.loads(line[len(b"data: "):]).get("usage") or {}).get("completion_tokens", 0))


# ---- the server's /metrics ----------------------------------------------------------------
async def scrape(client: aiohttp.ClientSession, url: str) -> str:
    try:
        async with client.get(f"{url.rstrip('/')}/metrics") as response:
            if response.status != 200:
                raise EndpointError(f"GET {url}/metrics: HTTP {response.status}")
            return await response.text()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise EndpointError(f"GET {url}/metrics: {_why(exc)}") from exc


def _samples(text: str, name: str):
    """Samples of the vLLM series `name` under any of its prefixes (vllm:, vllm_, none)."""
    for family in text_string_to_metric_families(text):
        if family.name.split(":")[-1].removeprefix("vllm_") == name:
            yield from family.samples


def kv_cache_blocks(text: str) -> tuple[int, int]:
    """The KV cache's (num_gpu_blocks, block_size) from `vllm:cache_config_info`."""
    for sample in _samples(text, "cache_config_info"):
        try:
            return int(sample.labels["num_gpu_blocks"]), int(sample.labels["block_size"])
        except (KeyError, ValueError):
            raise EndpointError(
                f"vllm:cache_config_info has no usable num_gpu_blocks/block_size: {sample.labels}"
            ) from None
    raise EndpointError("the server's /metrics has no vllm:cache_config_info (KV-cache size)")


def kv_cache_tokens(text: str) -> int:
    """KV-cache capacity in tokens: num_gpu_blocks x block_size of `vllm:cache_config_info`."""
    blocks, block_size = kv_cache_blocks(text)
    return blocks * block_size


def gauge_total(text: str, name: str) -> float:
    """The sum over engines of the vLLM gauge `name` (e.g. num_requests_running), from its
    sample lines alone: a full parse of vLLM's /metrics (50 kB, every histogram) took 30 ms of
    the load client's CPU, and a client watching the gauges 10 times a second lagged in
    noting its own requests' tokens."""
    total = 0.0
    for line in text.splitlines():
        if name not in line or line.startswith("#"):
            continue
        series, _, rest = line.rpartition("}") if "}" in line else line.partition(" ")
        if series.split("{", 1)[0].split(":")[-1].removeprefix("vllm_") == name:
            total += float(rest.split()[0])
    return total
