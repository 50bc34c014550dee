"""Stand-in vLLM replicas for the direct-scrape source: HTTP servers on 127.0.0.1 whose
`/metrics` serves a text the test sets (recorded from a real vLLM server, or generated).

As a script, `vllm_exporter.py COUNT FILE` serves FILE from COUNT exporters, prints their URLs
one per line, then serves until killed (the scrape benchmark runs it in its own process).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web


class Exporter:
    """One replica's /metrics; set `text` (or a function returning it, called at each scrape)
    to change what the next scrape sees."""

    def __init__(self, text: str | Callable[[], str]):
        self.text = text
        self.delay = 0.0  # seconds before each answer (a slow replica)
        self.url = ""
        self.client_ports: list[int] = []  # per scrape: which client connection asked
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> None:
        """Serve on `port` (0: a free one; a stopped exporter restarts on its own with
        `start(exporter.port)`)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        host, self.port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{self.port}/metrics"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        # The content type prometheus_client (hence vLLM) sends.
        self.client_ports.append(request.transport.get_extra_info("peername")[1])
        await asyncio.sleep(self.delay)
        text = self.text() if callable(self.text) else self.text
        return web.Response(body=text.encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


@asynccontextmanager
async def exporters(*texts: str) -> AsyncIterator[list[Exporter]]:
    """Started exporters, one per text, stopped on exit."""
    started = [Exporter(text) for text in texts]
    await asyncio.gather(*(e.start() for e in started))
    try:
        yield started
    finally:
        await asyncio.gather(*(e.stop() for e in started))


async def _serve(count: int, text: str) -> None:
    async with exporters(*[text] * count) as started:
        print("\n".join(e.url for e in started), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), Path(sys.argv[2]).read_text()))
