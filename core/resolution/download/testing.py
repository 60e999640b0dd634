"""Helpers for testing remote resolvers: tiny adapter files and a faulty local file server.

Everything binds 127.0.0.1 and builds adapters from a seed (no peft, no model needed), so
a resolver plugin's tests can check downloads, stalls and dropped connections quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from loraserve.resolution.download.source import ADAPTER_CONFIG, ADAPTER_WEIGHTS


def lora_adapter_files(
    base_model_name: str,
    rank: int = 4,
    hidden: int = 64,
    layers: int = 2,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
) -> dict[str, bytes]:
    """``{adapter_config.json: ..., adapter_model.safetensors: ...}`` of a PEFT-shaped LoRA."""
    import torch
    from safetensors.torch import save

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for target in targets:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen)  # [r, in]
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(
                hidden, rank, generator=gen
            )  # [out, r]
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": base_model_name,
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(targets),
        "task_type": "CAUSAL_LM",
    }
    return {
        ADAPTER_CONFIG: json.dumps(config, indent=2).encode(),
        ADAPTER_WEIGHTS: save(tensors),
    }


TarMember = tarfile.TarInfo | tuple[str | tarfile.TarInfo, bytes]


def tar_bytes(members: Iterable[TarMember], mode: str = "w:gz") -> bytes:
    """A tar archive in memory. A member is ``(name, content)``, or a prepared ``TarInfo``
    (a link, a device, a hostile path; see ``tar_member``) alone or with content."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for member in members:
            info, data = (member, b"") if isinstance(member, tarfile.TarInfo) else member
            if not isinstance(info, tarfile.TarInfo):
                info = tarfile.TarInfo(info)
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    """A tar header of any type, for archives that must be refused."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def zip_bytes(
    members: Iterable[tuple[str | zipfile.ZipInfo, bytes]],
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """A zip archive in memory, one ``(name or ZipInfo, content)`` per member."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buffer.getvalue()


def registered_hook_functions(plugin: object, hook: str) -> set:
    """The functions pluggy registers for ``hook`` when ``plugin`` (a module) is a plugin."""
    import pluggy

    from loraserve.plugins import hookspecs

    manager = pluggy.PluginManager("loraserve")
    manager.add_hookspecs(hookspecs)
    manager.register(plugin)
    return {impl.function for impl in getattr(manager.hook, hook).get_hookimpls()}


def record_written_sizes(monkeypatch, source_class: type) -> dict[str, int]:  # noqa: ANN001
    """Patch ``source_class.fetch`` to record the most bytes any fetch of each file left on
    disk, however it ended (for tests that a source stops at the listed size)."""
    sizes: dict[str, int] = {}
    fetch = source_class.fetch

    async def measured(self, file, dest, progress):  # noqa: ANN001, ANN202
        try:
            await fetch(self, file, dest, progress)
        finally:
            size = dest.stat().st_size if dest.exists() else 0
            sizes[file.name] = max(sizes.get(file.name, 0), size)

    monkeypatch.setattr(source_class, "fetch", measured)
    return sizes


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@dataclass
class Faults:
    """Misbehaviour for the next ``times`` file bodies: ``stall`` or ``drop`` after ``after``
    bytes, a ``status`` error, ``slow``: ``chunk``-byte pieces ``delay`` seconds apart, or
    ``inflate``: the body, then ``after`` bytes more than HEAD or the listing announced."""

    mode: str | None = None  # None, "stall", "drop", "status", "slow" or "inflate"
    after: int = 0
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
    if mode == "inflate":
        return await write_inflated(request, response, body, faults.after)
    response.content_length = len(body)
    await response.prepare(request)
    if mode == "slow":
        await write_slowly(response, body, faults.chunk, faults.delay)
        await response.write_eof()
        return response
    if mode in ("stall", "drop"):
        await response.write(body[: faults.after])
        if mode == "stall":
            await asyncio.sleep(3600)
        request.transport.close()  # the "server" dies mid-body
        return response
    await response.write(body)
    await response.write_eof()
    return response


@contextmanager
def moto_server() -> Iterator[str]:
    """A real S3 endpoint: ``moto_server`` on a free 127.0.0.1 port; yields its URL."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if exe is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]'")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class S3Proxy:
    """Forwards every request to an S3 endpoint, counting them in ``log`` and applying
    ``faults`` to successful GETs (stall or drop a third of the way in, or a slow link)."""

    def __init__(self, upstream: str, faults: Faults | None = None) -> None:
        self.upstream = upstream
        self.log = RequestLog()
        self.faults = faults or Faults()
        self._session = None

    async def handle(self, request):
        import aiohttp
        from aiohttp import web

        self.log.counts[(request.method, request.path)] += 1
        if self._session is None:
            self._session = aiohttp.ClientSession()
        skip = ("host", "content-length", "transfer-encoding")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
            auto_decompress=False,
        ) as upstream:
            body = await upstream.read()
            hop = {"transfer-encoding", "connection", "server", "date"}
            if request.method != "HEAD":  # HEAD keeps the object's length; bodies get their own
                hop.add("content-length")
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in hop}
            status = upstream.status
        mode = self.faults.take(request.path) if request.method == "GET" and status < 300 else None
        if mode is None:
            return web.Response(status=status, body=body, headers=out)
        response = web.StreamResponse(status=status, headers=out)
        if mode == "inflate":
            return await write_inflated(request, response, body, self.faults.after)
        response.content_length = len(body)
        await response.prepare(request)
        if mode == "slow":
            await write_slowly(response, body, self.faults.chunk, self.faults.delay)
            await response.write_eof()
            return response
        await response.write(body[: self.faults.after or len(body) // 3])
        if mode == "stall":
            await asyncio.sleep(3600)
        request.transport.close()  # the "server" dies mid-body
        return response

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


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


class FakeHub:
    """A tiny Hugging Face Hub: repos as {repo_id: {path: bytes}} on branch main, the commit a
    hash of the content; serve ``hub_app(fake)`` and point ``HF_ENDPOINT`` at it."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.listed_sizes: dict[str, int] = {}  # path -> size the revision API claims instead
        self.log = RequestLog()
        self.faults = Faults()

    def commit(self, repo_id: str) -> str:
        digest = hashlib.sha1(repo_id.encode())
        for path, data in sorted(self.repos[repo_id].items()):
            digest.update(path.encode() + hashlib.sha1(data).digest())
        return digest.hexdigest()

    def _repo(self, request):
        from aiohttp import web

        repo_id = f"{request.match_info['owner']}/{request.match_info['repo']}"
        if repo_id not in self.repos:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"})
        if request.match_info["rev"] not in ("main", self.commit(repo_id)):
            raise web.HTTPNotFound(headers={"X-Error-Code": "RevisionNotFound"})
        return repo_id

    async def revision(self, request):
        from aiohttp import web

        self.log.counts[(request.method, request.path)] += 1
        repo_id = self._repo(request)
        siblings = [
            {"rfilename": p, "size": self.listed_sizes.get(p, len(d)), "blobId": etag_of(d)[1:-1]}
            for p, d in self.repos[repo_id].items()
        ]
        return web.json_response({"id": repo_id, "sha": self.commit(repo_id), "siblings": siblings})

    async def tree(self, request):
        from aiohttp import web

        self.log.counts[(request.method, request.path)] += 1
        repo_id = self._repo(request)
        entries = [
            {"type": "file", "path": p, "size": len(d), "oid": etag_of(d).strip('"')}
            for p, d in self.repos[repo_id].items()
        ]
        return web.json_response(entries)

    async def resolve(self, request):
        from aiohttp import web

        self.log.counts[(request.method, request.path)] += 1
        repo_id = self._repo(request)
        data = self.repos[repo_id].get(request.match_info["path"])
        headers = {"X-Repo-Commit": self.commit(repo_id)}
        if data is None:
            raise web.HTTPNotFound(headers={**headers, "X-Error-Code": "EntryNotFound"})
        return await serve_bytes(request, data, self.faults, headers)


def hub_app(fake: FakeHub):
    """The three Hub routes huggingface_hub's snapshot_download uses."""
    from aiohttp import web

    app = web.Application()
    prefix = "/api/models/{owner}/{repo}"
    app.router.add_get(prefix + "/revision/{rev}", fake.revision)
    app.router.add_get(prefix + "/tree/{rev}", fake.tree)
    app.router.add_route("*", "/{owner}/{repo}/resolve/{rev}/{path:.*}", fake.resolve)
    return app


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


def engine_greedy_tokens(model_dir, served_model_name: str, loras: list, max_tokens: int = 8):
    """Greedy token ids per adapter (a name to resolve, or a LoRARequest), one engine for all."""
    from loraserve import LLM, SamplingParams
    from loraserve.plugins import reset_plugin_manager

    reset_plugin_manager()  # pick up the resolver variables the caller just set
    try:
        llm = LLM(
            model=str(model_dir),
            enable_lora=True,
            served_model_name=served_model_name,
            max_loras=2,
            max_lora_rank=16,
        )
        prompts = ["the quick brown fox", "select name from users"]
        params = SamplingParams(temperature=0, max_tokens=max_tokens)
        return [
            [out.outputs[0].token_ids for out in llm.generate(prompts, params, lora_request=lora)]
            for lora in loras
        ]
    finally:
        reset_plugin_manager()
