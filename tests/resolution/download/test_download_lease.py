"""Leases: a folder the download cache handed out stays until the caller's load ended.

Adapters come from a real HTTP origin on 127.0.0.1 through the HTTP resolver; the cache is
bounded to a few adapters, so eviction runs on almost every resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from loraserve.errors import LoRAAdapterError
from loraserve.resolution.download import DownloadCache, DownloadCacheConfig, release_lease
from loraserve.testing.adapters import lora_adapter_files
from loraserve.testing.servers import Faults, serve_bytes, start_app

pytest.importorskip("loraserve_http_resolver")
from loraserve_http_resolver import HttpResolver  # noqa: E402

BASE = "tiny-base"
WEIGHTS = "adapter_model.safetensors"
ADAPTER_BYTES = sum(len(d) for d in lora_adapter_files(BASE).values())


class Origin:
    """Adapter files by URL path; ``files`` may change or lose entries between requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.url = ""

    async def handle(self, request):
        from aiohttp import web

        data = self.files.get(request.path)
        if data is None:
            return web.Response(status=404)
        return await serve_bytes(request, data, Faults())

    def publish(self, name: str, seed: int) -> None:
        for file, data in lora_adapter_files(BASE, seed=seed).items():
            self.files[f"/{name}/{file}"] = data

    def withdraw(self, name: str) -> None:
        for path in [p for p in self.files if p.startswith(f"/{name}/")]:
            del self.files[path]


@pytest.fixture
async def origin():
    from aiohttp import web

    origin = Origin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handle)
    runner, origin.url = await start_app(app)
    yield origin
    await runner.cleanup()


def make_resolver(tmp_path: Path, origin: Origin, adapters: float, **config) -> HttpResolver:
    """A resolver whose cache holds about ``adapters`` adapters."""
    settings = dict(
        download_dir=tmp_path / "cache",
        max_cache_bytes=int(ADAPTER_BYTES * adapters),
        retries=0,
        timeout_s=30.0,
        list_deadline_s=60.0,
    )
    cache = DownloadCache(DownloadCacheConfig(**(settings | config)))
    return HttpResolver(origin.url + "/{lora_name}", cache=cache)


async def resolve(resolver: HttpResolver, name: str) -> Path:
    found = await resolver.resolve_lora(BASE, name)
    assert found is not None, name
    return Path(found.lora_path)


def cached_bytes(resolver: HttpResolver) -> int:
    """Bytes of adapter files under the cache's entries, whatever names them (read while
    eviction may be deleting some: what vanishes meanwhile counts as gone)."""
    total = 0
    for folder, _, names in os.walk(resolver.cache.store.entries):
        for name in names:
            if name != "entry.json":
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(folder, name)).st_size
    return total


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait for a worker thread's cleanup; the long limit only guards against a hang."""
    for _ in range(1500):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def test_folders_handed_out_survive_eviction_until_released(tmp_path, origin):
    """Room for three adapters, eight clients rotating twenty: none of the folders handed out
    is deleted before its release; after the releases the cache shrinks to its bound."""
    names = [f"a{i}" for i in range(20)]
    for seed, name in enumerate(names):
        origin.publish(name, seed)
    resolver = make_resolver(tmp_path, origin, adapters=3.5)

    async def client(seed: int) -> list[Path]:
        order = random.Random(seed).sample(names, len(names)) * 2
        return [await resolve(resolver, name) for name in order]

    handed = [p for paths in await asyncio.gather(*map(client, range(8))) for p in paths]
    assert len(handed) == 8 * 40
    assert [p for p in handed if not (p / WEIGHTS).is_file()] == []
    for path in handed:  # each load finished
        release_lease(path)
    bound = resolver.cache.config.max_cache_bytes
    await eventually(lambda: cached_bytes(resolver) <= bound, "the cache is within its bound")
    kept = resolver.cache.store.lru_entries()
    assert 1 <= len(kept) <= 3
    assert all(
        (resolver.cache.store.adapter_path(slug, e) / WEIGHTS).is_file() for _, slug, e in kept
    )


async def test_one_release_per_handout_and_extra_releases_are_harmless(tmp_path, origin):
    for seed, name in enumerate("ab"):
        origin.publish(name, seed)
    resolver = make_resolver(tmp_path, origin, adapters=1.5)
    a = await resolve(resolver, "a")
    assert await resolve(resolver, "a") == a  # handed out twice: two leases
    release_lease(a)
    b = await resolve(resolver, "b")
    assert a.is_dir() and b.is_dir()  # over the bound: the second lease on a still holds
    release_lease(a)
    await eventually(lambda: not a.exists(), "a is evicted once both leases ended")
    assert b.is_dir()
    release_lease(a)  # one release too many, and a path never handed out: no effect
    release_lease(tmp_path / "never-handed-out")
    assert b.is_dir()


async def test_a_lease_never_released_lapses(tmp_path, origin, caplog):
    for seed, name in enumerate("ab"):
        origin.publish(name, seed)
    resolver = make_resolver(tmp_path, origin, adapters=1.5, lease_timeout_s=0.2)
    a = await resolve(resolver, "a")  # never released
    await asyncio.sleep(0.3)
    with caplog.at_level(logging.WARNING, logger="loraserve.resolution.download.lease"):
        b = await resolve(resolver, "b")
    assert not a.exists() and b.is_dir()
    assert "lapsed without release_lease()" in caplog.text


async def test_a_replaced_version_stays_until_released(tmp_path, origin):
    origin.publish("a", seed=1)
    resolver = make_resolver(tmp_path, origin, adapters=10)
    old = await resolve(resolver, "a")
    origin.publish("a", seed=2)  # a new version while the old one is being loaded
    new = await resolve(resolver, "a")
    assert new != old and (old / WEIGHTS).is_file() and (new / WEIGHTS).is_file()
    release_lease(old)
    await eventually(lambda: not old.exists(), "the old version is deleted once released")
    assert (new / WEIGHTS).is_file()


async def test_an_adapter_gone_remotely_stays_until_released(tmp_path, origin):
    origin.publish("a", seed=1)
    resolver = make_resolver(tmp_path, origin, adapters=10)
    path = await resolve(resolver, "a")
    origin.withdraw("a")
    assert await resolver.resolve_lora(BASE, "a") is None
    assert (path / WEIGHTS).is_file()  # forgotten, but its loader may still be reading it
    release_lease(path)
    await eventually(lambda: not path.exists(), "the forgotten copy is deleted once released")
    assert resolver.cache.store.lru_entries() == []


async def test_resolution_ends_the_lease_once_its_load_ends(tmp_path, origin):
    """The resolution service releases what the cache handed out, loaded or refused, so
    the caller of the engine never has to; an unloaded folder may then be evicted."""
    from loraserve.lora.request import LoRARequest
    from loraserve.resolution.service import LoRAResolutionService

    for seed, name in enumerate("abc"):
        origin.publish(name, seed)
    resolver = make_resolver(tmp_path, origin, adapters=1.5)
    held: list[bool] = []

    async def load(found: LoRARequest) -> LoRARequest:
        from loraserve.resolution.download.lease import leases

        held.append(leases.held(found.lora_path))  # the folder is leased while it loads
        if found.lora_name == "b":
            raise LoRAAdapterError("b", "refused by the loader")
        return found

    service = LoRAResolutionService(BASE, load, resolvers=lambda: [("http", resolver)])
    a = Path((await service.resolve("a")).lora_path)
    with pytest.raises(LoRAAdapterError, match="refused by the loader"):
        await service.resolve("b")
    c = Path((await service.resolve("c")).lora_path)
    assert held == [True, True, True]
    assert not a.exists() and c.is_dir()  # nothing held "a" once its load ended
