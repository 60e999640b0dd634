"""A small local Hugging Face Hub for the Hub resolver's tests: the revision API, the tree
API and file resolve with ETag / X-Repo-Commit headers, pointed at by ``HF_ENDPOINT``.
benchmarks/cold_start.py loads this file for the same fake."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loraserve.testing.servers import Faults, RequestLog, etag_of, serve_bytes, start_app


class FakeHub:
    """A tiny Hugging Face Hub: repos as {repo_id: {path: bytes}} on branch main, the commit a
    hash of the content; serve ``hub_app(fake)`` and point ``HF_ENDPOINT`` at it."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.listed_sizes: dict[str, int] = {}  # path -> size the revision API claims instead
        self.log = RequestLog()
        self.faults = Faults()
        self.url = ""  # set by serve()
        self._runner = None

    async def serve(self) -> str:
        """Serve on the running loop; returns the URL for ``HF_ENDPOINT``."""
        self._runner, self.url = await start_app(hub_app(self))
        return self.url

    async def stop(self) -> None:
        """Stop answering: connections are refused from now on."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

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


def hub_env(monkeypatch, url: str, tmp_path: Path) -> None:
    """huggingface_hub pointed at ``url``, with its own cache in ``tmp_path / "hf-cache"``."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
async def hub(monkeypatch, tmp_path) -> AsyncIterator[FakeHub]:
    """A fake Hub on this test's loop, set as ``HF_ENDPOINT``; its cache in tmp_path."""
    fake = FakeHub()
    hub_env(monkeypatch, await fake.serve(), tmp_path)
    yield fake
    await fake.stop()
