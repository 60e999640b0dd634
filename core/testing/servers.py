"""Local aiohttp servers for resolver tests: bytes served with HEAD, Range and an ETag, with
faults injected on demand (stall, drop, error status, slow link, body longer than announced)
and every request counted. Everything binds 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from dataclasses import dataclass, field


def etag_of(data: bytes) -> str:
    """A strong ETag for ``data``: equal bytes, equal tag."""
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@dataclass
class Faults:
    """Misbehaviour for the next ``times`` file bodies: ``stall`` or ``drop`` after ``after``
    bytes, a ``status`` error, ``slow``: ``chunk``-byte pieces ``delay`` seconds apart, or
    ``inflate``: the body, then ``after`` bytes more than HEAD or the listing announced."""

    mode: str | None = None  # None, "stall", "drop", "status", "slow" or "inflate"
    after: int = 0  # bytes sent before a stall or drop (0: a third of the body)
    times: int = 10**9
    status: int = 500
    only: str | None = None  # apply only to paths ending with this
    chunk: int = 64 * 1024
    delay: float = 0.0

    def take(self, path: str) -> str | None:
        if self.mode is None or self.times <= 0 or (self.only and not path.endswith(self.only)):
            return None
        self.times -= 1
        return self.mode


@dataclass
class RequestLog:
    """Counts of (method, path) served, for "exactly one download" assertions."""

    counts: Counter = field(default_factory=Counter)

    def gets(self, suffix: str = "") -> int:
        return sum(n for (m, p), n in self.counts.items() if m == "GET" and p.endswith(suffix))


async def serve_bytes(request, data: bytes, faults: Faults, headers: dict[str, str] | None = None):
    """Answer HEAD/GET (with Range) for ``data``, applying the configured fault to GETs."""
    from aiohttp import web

    headers = {"ETag": etag_of(data), "Accept-Ranges": "bytes", **(headers or {})}
    start = 0
    if request.method == "GET" and request.http_range.start is not None:
        start = request.http_range.start
    body = data[start:]
    status = 206 if start else 200
    if start:
        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
    if request.method == "HEAD":
        return web.Response(status=200, headers={**headers, "Content-Length": str(len(data))})
    mode = faults.take(request.path)
    if mode == "status":
        return web.Response(status=faults.status, text="injected failure")
    response = web.StreamResponse(status=status, headers=headers)
    return await write_with_fault(request, response, body, faults, mode)


async def write_with_fault(request, response, body: bytes, faults: Faults, mode: str | None):
    """Send ``body`` as ``mode`` says: whole (None), ``slow``, ``inflate``d, or cut off by a
    server that dies (``drop``) or goes silent (``stall``) part way through."""
    if mode == "inflate":
        return await write_inflated(request, response, body, faults.after)
    response.content_length = len(body)
    await response.prepare(request)
    if mode is None:
        await response.write(body)
    elif mode == "slow":
        await write_slowly(response, body, faults.chunk, faults.delay)
    else:
        await response.write(body[: faults.after or len(body) // 3])
        if mode == "stall":
            await asyncio.sleep(3600)
        request.transport.close()  # the "server" dies mid-body
        return response
    await response.write_eof()
    return response


async def write_inflated(request, response, body: bytes, extra: int):
    """Send ``body`` and ``extra`` bytes more, chunked: no length the client could check."""
    response.enable_chunked_encoding()
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):  # the client hangs up past the listed size
        await response.write(body + b"\0" * extra)
        await response.write_eof()
    return response


async def write_slowly(response, body: bytes, chunk: int, delay: float) -> None:
    """Write ``body`` in ``chunk``-byte pieces ``delay`` seconds apart (a slow link)."""
    for start in range(0, len(body), chunk):
        await response.write(body[start : start + chunk])
        await asyncio.sleep(delay)


async def start_app(app) -> tuple[object, str]:
    """Run an aiohttp app on a free 127.0.0.1 port; return (runner, base URL)."""
    from aiohttp import web

    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


class AppThread:
    """An aiohttp app served from its own thread and loop, for synchronous callers (LLM)."""

    def __init__(self, app) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runner, self.url = asyncio.run_coroutine_threadsafe(start_app(app), self.loop).result(
            timeout=30
        )

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
