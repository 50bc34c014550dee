"""Stand-in vLLM replicas for the direct-scrape source: HTTP servers on 127.0.0.1 whose
`/metrics` serves a text the test sets (recorded from a real vLLM server, or generated).

As a script, `vllm_exporter.py COUNT FILE` serves FILE from COUNT exporters, prints their URLs
one per line, then serves until killed (the scrape benchmark runs it in its own process).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web


class Exporter:
    """One replica's /metrics; set `text` to change what the next scrape sees."""

    def __init__(self, text: str):
        self.text = text
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/metrics"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        # The content type prometheus_client (hence vLLM) sends.
        return web.Response(body=self.text.encode(),
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
