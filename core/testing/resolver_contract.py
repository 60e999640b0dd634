"""The behaviour every remote resolver plugin shares, tested once.

A plugin's test file subclasses ``RemoteResolverContract`` (as s3fs subclasses fsspec's
abstract tests), sets the class attributes and defines a ``backend`` fixture: a
``RemoteBackend`` serving adapters from 127.0.0.1 that can be made to fail. The contract
then checks single flight, revalidation, serving through the engine, clean failures,
refusals and unknown names, the same way for every backend::

    @pytest.fixture
    async def backend(tmp_path):
        ...  # start a local X; yield an XBackend(RemoteBackend) for it; stop it

    class TestXResolverContract(RemoteResolverContract):
        plugin, plugin_module, client_module = "lora_x_resolver", "loraserve_x_resolver", "x"
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

import pytest

from loraserve.errors import AdapterDownloadError, LoRAAdapterError, LoRANotFoundError
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver
from loraserve.resolution.download import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    DownloadCache,
    DownloadCacheConfig,
)
from loraserve.testing.adapters import lora_adapter_files
from loraserve.testing.engine import engine_greedy_tokens
from loraserve.testing.servers import Faults, RequestLog
from loraserve.testing.tiny_models import make_adapter, make_tiny_model

BASE = "tiny-base"  # the base model name every adapter is published for
# names a resolver refuses without asking its backend (they could escape its template)
UNSAFE_STEMS = ("../secret", "..", "a/../../secret", "x?secret", "%2e%2e/secret", "/secret")
# adapters that download fine but must not load: what is wrong -> bad files from good ones
MALFORMED = {
    "truncated": lambda f: {**f, ADAPTER_WEIGHTS: f[ADAPTER_WEIGHTS][:100]},
    "one-byte-short": lambda f: {**f, ADAPTER_WEIGHTS: f[ADAPTER_WEIGHTS][:-1]},
    "bad-header": lambda f: {**f, ADAPTER_WEIGHTS: b"\x10" + f[ADAPTER_WEIGHTS][1:]},
    "not-lora": lambda f: {**f, ADAPTER_CONFIG: b'{"peft_type": "IA3"}'},
    "other-base": lambda f: lora_adapter_files("some-other-base"),
}


class RemoteBackend(ABC):
    """A local stand-in for one remote store, as the contract drives it.

    ``log`` counts the requests it answered; ``faults`` (settable) applies to GETs of
    adapter files, as ``loraserve.testing.servers.serve_bytes`` applies it.
    """

    log: RequestLog
    faults: Faults

    def name(self, stem: str) -> str:
        """The adapter name that finds what ``publish(stem, ...)`` put there."""
        return stem

    @abstractmethod
    def publish(self, stem: str, files: dict[str, bytes]) -> None:
        """Put ``files`` (replacing any) where adapter ``name(stem)`` of ``BASE`` lives."""

    @abstractmethod
    def resolver(self, cache: DownloadCache) -> LoRAResolver:
        """The plugin's resolver, pointed at this backend, downloading through ``cache``."""

    @abstractmethod
    def plugin_env(self) -> dict[str, str]:
        """The variables that make the plugin, loaded by name, resolve from this backend."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop answering: connections are refused from now on."""

    def stray_files(self) -> list[Path]:
        """Adapter files a failed download left where the backend's own client keeps them
        (the Hub's cache, say); the download cache's own folders are checked anyway."""
        return []


def download_cache(tmp_path: Path, **config) -> DownloadCache:
    """A cache in ``tmp_path``; generous limits unless a test is about them (busy machines)."""
    settings = dict(download_dir=tmp_path / "cache", retries=0, timeout_s=30.0)
    settings["list_deadline_s"] = 60.0
    return DownloadCache(DownloadCacheConfig(**(settings | config)))


def adapter_bytes(found: LoRARequest, names=ADAPTER_FILES) -> dict[str, bytes]:
    return {name: (Path(found.lora_path) / name).read_bytes() for name in names}


def assert_nothing_kept(cache: DownloadCache, backend: RemoteBackend | None = None) -> None:
    """Nothing half-written and nothing loadable is left behind."""
    assert list(cache.store.tmp.glob("*")) == [], "a partial download was left in tmp"
    assert cache.store.lru_entries() == [], "a failed adapter was kept in the cache"
    assert backend is None or backend.stray_files() == []


async def timed(call) -> tuple[object, float]:
    """(result or raised exception, seconds); the limit only guards against a hang."""
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(call, 60)
    except Exception as exc:
        result = exc
    return result, time.monotonic() - started


class RemoteResolverContract:
    """Tests every remote resolver passes. A subclass sets the attributes below; its module
    (or class) defines the ``backend`` fixture: a ``RemoteBackend``, stopped at teardown."""

    plugin: str  # the plugin's name, as VLLM_PLUGINS lists it
    plugin_module: str  # its module, which must import without the client library
    client_module: str  # the client library, imported only when the first name is looked up
    # fault mode (see Faults) -> a regex the AdapterDownloadError must match (None: any);
    # modes the backend's client recovers from by itself (the Hub resumes cut transfers) are
    # left out
    fault_errors: dict[str, str | None] = {"drop": None, "stall": None}
    refused_error: str | None = None  # a regex the error for a refused connection must match

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "fault" in metafunc.fixturenames:
            metafunc.parametrize("fault", sorted(self.fault_errors))

    async def test_resolves_and_revalidates(self, tmp_path, backend):
        files = lora_adapter_files(BASE, seed=1)
        backend.publish("sql", files)
        resolver, name = backend.resolver(download_cache(tmp_path)), backend.name("sql")
        found = await resolver.resolve_lora(BASE, name)
        assert (found.lora_name, found.base_model_name) == (name, BASE)
        assert adapter_bytes(found) == files
        again = await resolver.resolve_lora(BASE, name)  # unchanged: listed, not downloaded
        assert again.lora_path == found.lora_path and backend.log.gets(ADAPTER_WEIGHTS) == 1
        changed = lora_adapter_files(BASE, seed=2)
        backend.publish("sql", changed)
        fresh = await resolver.resolve_lora(BASE, name)
        assert adapter_bytes(fresh) == changed and backend.log.gets(ADAPTER_WEIGHTS) == 2

    async def test_concurrent_requests_for_one_name_download_once(self, tmp_path, backend):
        backend.publish("sql", lora_adapter_files(BASE))
        resolver = backend.resolver(download_cache(tmp_path))
        calls = (resolver.resolve_lora(BASE, backend.name("sql")) for _ in range(32))
        found = await asyncio.gather(*calls)
        assert len({f.lora_path for f in found}) == 1
        assert backend.log.gets(ADAPTER_WEIGHTS) == 1 and backend.log.gets(ADAPTER_CONFIG) == 1

    async def test_served_through_the_engine_like_a_local_adapter(
        self, tmp_path, backend, monkeypatch
    ):
        """The plugin, loaded by name: an unknown model name is fetched from the backend and
        generates the same greedy tokens as the same adapter loaded from a local folder."""
        model_dir = make_tiny_model(tmp_path / "model", seed=3)
        adapter = make_adapter(
            model_dir, tmp_path / "local", targets=("q_proj", "v_proj"), base_model_name=BASE
        )
        backend.publish("sql", {n: (adapter / n).read_bytes() for n in ADAPTER_FILES})
        env = {
            "VLLM_PLUGINS": self.plugin,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_LORA_RESOLVER_DOWNLOAD_DIR": str(tmp_path / "downloads"),
        }
        for variable, value in (env | backend.plugin_env()).items():
            monkeypatch.setenv(variable, value)
        loras = [backend.name("sql"), LoRARequest("sql-local", 1, str(adapter)), None]
        # the engine runs in a thread: the backend answers on this test's event loop
        remote, local, base = await asyncio.to_thread(engine_greedy_tokens, model_dir, BASE, loras)
        assert remote == local and remote != base
        assert backend.log.gets(ADAPTER_WEIGHTS) == 1  # fetched from this backend

    async def test_a_download_cut_off_fails_cleanly_then_recovers(self, tmp_path, backend, fault):
        """A server dying or going silent mid-body (or failing) ends in a download error with
        nothing half-written; once the backend is healthy the same name resolves."""
        files = lora_adapter_files(BASE)
        backend.publish("sql", files)
        backend.faults = Faults(mode=fault, after=1000, only=ADAPTER_WEIGHTS)
        cache = download_cache(tmp_path, timeout_s=1.0)
        resolving = backend.resolver(cache).resolve_lora(BASE, backend.name("sql"))
        with pytest.raises(AdapterDownloadError, match=self.fault_errors[fault]):
            await asyncio.wait_for(resolving, 60)  # a hang guard
        assert backend.log.gets(ADAPTER_WEIGHTS) >= 1  # the fault really hit a download
        assert_nothing_kept(cache, backend)
        backend.faults = Faults()
        patient = download_cache(tmp_path)  # the same folder, no 1 s limit on a busy machine
        found = await backend.resolver(patient).resolve_lora(BASE, backend.name("sql"))
        assert adapter_bytes(found) == files

    async def test_refused_connections_serve_the_cached_copy_at_once(self, tmp_path, backend):
        """Nothing listens any more: that is known at once, and no retry waits for it."""
        backend.publish("sql", lora_adapter_files(BASE))
        deadline = 30.0  # long: backoff of 8 retries alone would take 20 s of it
        cache = download_cache(tmp_path, retries=8, list_deadline_s=deadline)
        resolver = backend.resolver(cache)
        cached = await resolver.resolve_lora(BASE, backend.name("sql"))
        await backend.stop()
        again, served_in = await timed(resolver.resolve_lora(BASE, backend.name("sql")))
        failed, failed_in = await timed(resolver.resolve_lora(BASE, backend.name("never-cached")))
        assert isinstance(again, LoRARequest) and again.lora_path == cached.lora_path, again
        assert isinstance(failed, AdapterDownloadError), failed
        assert re.search(self.refused_error or "", str(failed)), failed
        assert served_in < deadline / 3 and failed_in < deadline / 3

    async def test_an_oversize_adapter_is_refused_from_the_listing(self, tmp_path, backend):
        files = lora_adapter_files(BASE)
        backend.publish("big", files)
        cache = download_cache(tmp_path, max_adapter_bytes=len(files[ADAPTER_WEIGHTS]) // 2)
        with pytest.raises(LoRAAdapterError, match="limit"):
            await backend.resolver(cache).resolve_lora(BASE, backend.name("big"))
        assert backend.log.gets(ADAPTER_WEIGHTS) == 0  # refused before any download
        assert_nothing_kept(cache)

    async def test_malformed_adapters_are_refused(self, tmp_path, backend):
        files = lora_adapter_files(BASE)
        cache = download_cache(tmp_path)
        resolver = backend.resolver(cache)
        for what, make in MALFORMED.items():
            backend.publish(what, make(files))
            with pytest.raises(LoRAAdapterError):
                await resolver.resolve_lora(BASE, backend.name(what))
            assert_nothing_kept(cache)

    async def test_unknown_and_unsafe_names_resolve_to_none(self, tmp_path, backend):
        backend.publish("sql", lora_adapter_files(BASE))
        cache = download_cache(tmp_path)
        resolver = backend.resolver(cache)
        assert await resolver.resolve_lora(BASE, backend.name("nope")) is None
        asked = sum(backend.log.counts.values())
        for stem in UNSAFE_STEMS:
            for name in {stem, backend.name(stem)}:
                assert await resolver.resolve_lora(BASE, name) is None, name
        assert sum(backend.log.counts.values()) == asked, "an unsafe name reached the backend"
        assert_nothing_kept(cache)

    async def test_an_unknown_name_falls_through_to_the_next_resolver(self, tmp_path, backend):
        from loraserve.resolution.service import LoRAResolutionService

        known = backend.name("known")

        class Fallback(LoRAResolver):
            async def resolve_lora(self, base_model_name, lora_name):
                return LoRARequest(lora_name, 1, "/elsewhere") if lora_name == known else None

        async def load(request):
            return request

        chain = [(self.plugin, backend.resolver(download_cache(tmp_path))), ("next", Fallback())]
        service = LoRAResolutionService(BASE, load, resolvers=lambda: chain)
        assert (await service.resolve(known)).lora_path == "/elsewhere"
        with pytest.raises(LoRANotFoundError):
            await service.resolve(backend.name("nowhere"))
        assert sum(backend.log.counts.values()) >= 2  # the backend was asked both times

    def test_plugin_module_imports_no_client_library(self):
        code = f"import sys, {self.plugin_module}; assert {self.client_module!r} not in sys.modules"
        subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
