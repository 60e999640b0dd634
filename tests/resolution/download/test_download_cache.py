"""The shared download cache, driven by an in-memory source: single flight, revalidation,
atomic install, cleanup after failures, size limits, LRU eviction.

A folder the cache hands out is leased until the caller releases it (test_download_lease.py
beside this file); tests of what eviction deletes release theirs, as a finished load.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from loraserve.errors import AdapterDownloadError, LoRAAdapterError
from loraserve.resolution.download import (
    DownloadCache,
    DownloadCacheConfig,
    RemoteFile,
    RemoteListing,
    SourceUnreachableError,
    TransientSourceError,
    register_adapter_owner,
    release_lease,
)
from loraserve.testing.adapters import lora_adapter_files, tar_bytes
from loraserve.testing.probes import registered_hook_functions
from loraserve.testing.servers import etag_of

BASE = "tiny-base"


class MemorySource:
    """A remote adapter held in a dict; counts listings and fetches, can fail or stall."""

    def __init__(self, files: dict[str, bytes] | None, location: str = "mem://sql", archive=False):
        self.files = files
        self.location = location
        self.archive = archive
        self.lists = 0
        self.fetches: Counter[str] = Counter()
        # "transient", "stall", "endless" (ignores the byte limit): fetches fail so;
        # "unreachable" (a 5xx-like error), "refused", "hang": listings fail so
        self.fail: str | None = None
        self.delay = 0.0
        self.lie_about_size = False

    async def list_files(self) -> RemoteListing | None:
        self.lists += 1
        if self.fail == "unreachable":
            raise TransientSourceError("HTTP 503")
        if self.fail == "refused":
            raise SourceUnreachableError("connection refused")
        if self.fail == "hang":
            await asyncio.sleep(3600)
        if self.files is None:
            return None
        files = tuple(
            RemoteFile(
                n,
                10 if self.lie_about_size and n.endswith("safetensors") else len(d),
                etag_of(d),
                n,
            )
            for n, d in self.files.items()
        )
        return RemoteListing(files, archive=self.archive)

    async def fetch(self, file: RemoteFile, dest: Path, progress) -> None:
        self.fetches[file.name] += 1
        await asyncio.sleep(self.delay)
        data = self.files[file.name]
        with dest.open("wb") as f:
            progress(len(data) // 2)
            f.write(data[: len(data) // 2])
            if self.fail == "transient":
                raise TransientSourceError("connection reset")
            if self.fail == "stall":
                await asyncio.sleep(3600)
            while self.fail == "endless" and file.name == "adapter_model.safetensors":
                try:
                    progress(64 * 1024)
                except Exception:  # a careless source: goes on past the limit
                    pass
                f.write(b"\0" * 64 * 1024)
                await asyncio.sleep(0.01)
            progress(len(data) - len(data) // 2)
            f.write(data[len(data) // 2 :])


def make_cache(tmp_path: Path, **overrides) -> DownloadCache:
    settings = dict(download_dir=tmp_path / "cache", retries=0, timeout_s=5.0, list_deadline_s=60.0)
    settings.update(overrides)
    return DownloadCache(DownloadCacheConfig(**settings))


async def get_loaded(cache: DownloadCache, source, lora_name: str = "sql") -> Path | None:
    """``cache.get``, then release the folder as a caller does once its load finished."""
    path = await cache.get(source, lora_name=lora_name, base_model_name=BASE)
    if path is not None:
        release_lease(path)
    return path


def leftovers(cache: DownloadCache) -> list[Path]:
    return list(cache.store.tmp.iterdir()) if cache.store.tmp.exists() else []


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return lora_adapter_files(BASE, seed=1)


async def test_download_then_hit(tmp_path, files):
    cache, source = make_cache(tmp_path), MemorySource(files)
    path = await cache.get(source, lora_name="sql", base_model_name=BASE)
    assert path is not None and path.is_relative_to(tmp_path / "cache" / "entries")
    assert (path / "adapter_model.safetensors").read_bytes() == files["adapter_model.safetensors"]
    again = await cache.get(source, lora_name="sql", base_model_name=BASE)
    assert again == path
    assert source.fetches == Counter({"adapter_config.json": 1, "adapter_model.safetensors": 1})
    assert source.lists == 2  # revalidated, not re-downloaded
    assert cache.stats["download"] == 1 and cache.stats["hit"] == 1
    assert leftovers(cache) == []


async def test_32_concurrent_requests_download_once(tmp_path, files):
    cache, source = make_cache(tmp_path), MemorySource(files)
    source.delay = 0.05
    paths = await asyncio.gather(
        *(cache.get(source, lora_name="sql", base_model_name=BASE) for _ in range(32))
    )
    assert len(set(paths)) == 1
    assert source.lists == 1
    assert source.fetches["adapter_model.safetensors"] == 1


async def test_two_caches_on_one_dir_download_once(tmp_path, files):
    """Two processes sharing a cache dir: the key's lock file serialises them."""
    source = MemorySource(files)
    source.delay = 0.05
    a, b = make_cache(tmp_path), make_cache(tmp_path)
    pa, pb = await asyncio.gather(
        a.get(source, lora_name="sql", base_model_name=BASE),
        b.get(source, lora_name="sql", base_model_name=BASE),
    )
    assert pa == pb
    assert source.fetches["adapter_model.safetensors"] == 1


async def test_changed_remote_is_fetched_again(tmp_path, files):
    cache, source = make_cache(tmp_path), MemorySource(dict(files))
    first = await get_loaded(cache, source)
    source.files = lora_adapter_files(BASE, seed=2)
    second = await cache.get(source, lora_name="sql", base_model_name=BASE)
    assert second != first and not first.exists()  # the old version is gone
    assert (second / "adapter_model.safetensors").read_bytes() == source.files[
        "adapter_model.safetensors"
    ]
    assert source.fetches["adapter_model.safetensors"] == 2


async def test_remote_gone_returns_none_and_forgets(tmp_path, files):
    cache, source = make_cache(tmp_path), MemorySource(dict(files))
    path = await get_loaded(cache, source)
    source.files = None
    assert await cache.get(source, lora_name="sql", base_model_name=BASE) is None
    assert not path.exists()


async def test_unreachable_remote_serves_cached_copy(tmp_path, files):
    cache, source = make_cache(tmp_path), MemorySource(files)
    path = await cache.get(source, lora_name="sql", base_model_name=BASE)
    source.fail = "unreachable"
    assert await cache.get(source, lora_name="sql", base_model_name=BASE) == path
    cold = MemorySource(files, location="mem://other")
    cold.fail = "unreachable"
    with pytest.raises(AdapterDownloadError, match="503"):
        await cache.get(cold, lora_name="other", base_model_name=BASE)


async def test_a_refused_connection_is_not_retried(tmp_path, files):
    """Refused is known at once: the cached copy is served (or a 503 given) without retries."""
    cache, source = make_cache(tmp_path, retries=3), MemorySource(files)
    path = await cache.get(source, lora_name="sql", base_model_name=BASE)
    source.fail, source.lists = "refused", 0
    assert await cache.get(source, lora_name="sql", base_model_name=BASE) == path
    cold = MemorySource(files, location="mem://other")
    cold.fail = "refused"
    with pytest.raises(AdapterDownloadError, match="connection refused"):
        await cache.get(cold, lora_name="other", base_model_name=BASE)
    assert source.lists == 1 and cold.lists == 1
    source.fail, source.lists = "unreachable", 0  # other transient failures are retried
    assert await cache.get(source, lora_name="sql", base_model_name=BASE) == path
    assert source.lists == 4


async def test_a_hanging_listing_ends_at_the_deadline(tmp_path, files):
    """The listing deadline, not the (longer) transfer timeout, bounds a silent remote."""
    cache = make_cache(tmp_path, timeout_s=3600.0, retries=3, list_deadline_s=0.5)
    source = MemorySource(files)
    path = await cache.get(source, lora_name="sql", base_model_name=BASE)
    source.fail = "hang"
    hang_guard = 30  # seconds; only a broken deadline comes near it
    get = cache.get(source, lora_name="sql", base_model_name=BASE)
    assert await asyncio.wait_for(get, hang_guard) == path
    cold = MemorySource(files, location="mem://other")
    cold.fail = "hang"
    with pytest.raises(AdapterDownloadError, match="VLLM_LORA_RESOLVER_LIST_DEADLINE"):
        get = cache.get(cold, lora_name="other", base_model_name=BASE)
        await asyncio.wait_for(get, hang_guard)


def test_the_listing_deadline_is_read_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_LORA_RESOLVER_DOWNLOAD_DIR", str(tmp_path))
    monkeypatch.setenv("VLLM_LORA_RESOLVER_LIST_DEADLINE", "2.5")
    assert DownloadCacheConfig.from_env().list_deadline_s == 2.5
    monkeypatch.delenv("VLLM_LORA_RESOLVER_LIST_DEADLINE")
    assert DownloadCacheConfig.from_env().list_deadline_s == 5.0
    for bad in ("soon", "0", "-1", "nan"):
        monkeypatch.setenv("VLLM_LORA_RESOLVER_LIST_DEADLINE", bad)
        with pytest.raises(ValueError, match="VLLM_LORA_RESOLVER_LIST_DEADLINE"):
            DownloadCacheConfig.from_env()


@pytest.mark.parametrize("fault", ["transient", "stall"])
async def test_failed_download_leaves_nothing_and_next_succeeds(tmp_path, files, fault):
    cache, source = make_cache(tmp_path, timeout_s=0.3), MemorySource(files)
    source.fail = fault
    with pytest.raises(AdapterDownloadError):
        await cache.get(source, lora_name="sql", base_model_name=BASE)
    assert leftovers(cache) == [] and cache.store.lru_entries() == []
    source.fail = None
    patient = make_cache(tmp_path)  # the same folder, without the 0.3 s stall limit
    path = await patient.get(source, lora_name="sql", base_model_name=BASE)
    assert (path / "adapter_config.json").is_file()


async def test_retries_recover_from_a_transient_failure(tmp_path, files):
    cache, source = make_cache(tmp_path, retries=2), MemorySource(files)
    source.fail = "transient"
    original = source.fetch

    async def fail_once(file, dest, progress):
        try:
            await original(file, dest, progress)
        finally:
            source.fail = None

    source.fetch = fail_once
    assert await cache.get(source, lora_name="sql", base_model_name=BASE) is not None


async def test_cancelled_download_leaves_nothing(tmp_path, files):
    cache, source = make_cache(tmp_path), MemorySource(files)
    source.fail = "stall"
    task = asyncio.ensure_future(cache.get(source, lora_name="sql", base_model_name=BASE))
    await asyncio.sleep(0.2)
    # the download belongs to the cache, not to the caller: cancel the cache's own task
    for inner in list(cache._flight._tasks.values()):
        inner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(cache) == [] and cache.store.lru_entries() == []


async def test_oversize_adapter_refused_before_download(tmp_path, files):
    cache = make_cache(tmp_path, max_adapter_bytes=len(files["adapter_model.safetensors"]) // 2)
    source = MemorySource(files)
    with pytest.raises(LoRAAdapterError, match="limit"):
        await cache.get(source, lora_name="sql", base_model_name=BASE)
    assert source.fetches == Counter()


async def test_adapter_larger_than_listed_is_cut_off(tmp_path, files):
    """Past its listed size a fetch is retried (the file may have changed); past the
    adapter limit the adapter is refused."""
    source = MemorySource(files)
    source.lie_about_size = True
    cache = make_cache(tmp_path)
    with pytest.raises(AdapterDownloadError, match="more than the 10 bytes it listed"):
        await cache.get(source, lora_name="sql", base_model_name=BASE)
    assert leftovers(cache) == []
    small = make_cache(tmp_path, max_adapter_bytes=len(files["adapter_model.safetensors"]) // 2)
    with pytest.raises(LoRAAdapterError, match="exceeds"):
        await small.get(source, lora_name="sql", base_model_name=BASE)
    assert leftovers(small) == []


async def test_a_source_ignoring_the_limit_is_stopped(tmp_path, files):
    """The watchdog also checks the file on disk, for a source that swallows the error."""
    cache, source = make_cache(tmp_path), MemorySource(files)
    source.fail = "endless"
    get = cache.get(source, lora_name="sql", base_model_name=BASE)
    with pytest.raises(AdapterDownloadError, match="more than the .* bytes it listed"):
        await asyncio.wait_for(get, 60)  # a hang guard: the watchdog ends it in ~0.5 s
    assert leftovers(cache) == []


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda f: {**f, "adapter_config.json": b"{not json"}, "not valid JSON"),
        (
            lambda f: {
                **f,
                "adapter_config.json": f["adapter_config.json"].replace(b"LORA", b"IA3"),
            },
            "peft_type",
        ),
        (
            lambda f: {**f, "adapter_model.safetensors": f["adapter_model.safetensors"][:-7]},
            "outside the file",
        ),
        (lambda f: {**f, "adapter_model.safetensors": b"\xff" * 8 + b"{}"}, "header length"),
        (
            lambda f: {"adapter_config.json": f["adapter_config.json"]},
            "no adapter_model.safetensors",
        ),
    ],
)
async def test_malformed_adapters_refused(tmp_path, files, corrupt, message):
    cache, source = make_cache(tmp_path), MemorySource(corrupt(files))
    with pytest.raises(LoRAAdapterError, match=message):
        await cache.get(source, lora_name="sql", base_model_name=BASE)
    assert leftovers(cache) == [] and cache.store.lru_entries() == []


async def test_wrong_base_model_refused_before_weights(tmp_path):
    cache, source = make_cache(tmp_path), MemorySource(lora_adapter_files("other-base"))
    with pytest.raises(LoRAAdapterError, match="other-base"):
        await cache.get(source, lora_name="sql", base_model_name=BASE)
    assert source.fetches["adapter_model.safetensors"] == 0


async def test_lru_eviction_keeps_cache_within_bound(tmp_path):
    sources = {
        n: MemorySource(lora_adapter_files(BASE, seed=i), f"mem://{n}") for i, n in enumerate("abc")
    }
    size = sum(len(d) for d in sources["a"].files.values())
    cache = make_cache(tmp_path, max_cache_bytes=int(size * 2.5))
    paths = {}
    for name in "ab":
        paths[name] = await get_loaded(cache, sources[name], name)
        await asyncio.sleep(0.02)  # distinct mtimes
    await get_loaded(cache, sources["a"], "a")  # a is now most recent
    await asyncio.sleep(0.02)
    paths["c"] = await get_loaded(cache, sources["c"], "c")
    assert paths["a"].exists() and paths["c"].exists() and not paths["b"].exists()
    assert [e.lora_name for _, _, e in cache.store.lru_entries()] == ["a", "c"]


async def test_archive_source_is_unpacked(tmp_path, files):
    archive = tar_bytes((f"sql/{name}", data) for name, data in files.items())
    source = MemorySource({"sql.tar.gz": archive}, archive=True)
    path = await make_cache(tmp_path).get(source, lora_name="sql", base_model_name=BASE)
    assert sorted(p.name for p in path.iterdir()) == sorted(files)


async def test_crash_between_rename_and_entry_leaves_nothing_loadable(tmp_path, files):
    """A version folder that no entry.json names is never handed out."""
    cache, source = make_cache(tmp_path), MemorySource(files)
    path = await get_loaded(cache, source)
    (path.parent / "entry.json").unlink()
    assert cache.store.lru_entries() == []
    source.files = lora_adapter_files(BASE, seed=5)
    fresh = await cache.get(source, lora_name="sql", base_model_name=BASE)
    assert [p.name for p in fresh.parent.iterdir() if p.is_dir()] == [fresh.name]


class FakeEngine:
    """An ``AdapterOwner`` holding the folders it was told about, busy until told otherwise."""

    def __init__(self) -> None:
        self.loaded: dict[str, float] = {}  # folder -> when last used (monotonic)
        self.busy = True

    def last_used(self, lora_path: str) -> float | None:
        return self.loaded.get(lora_path)

    def release_idle(self, lora_path: str, unused_since: float) -> bool:
        if self.busy:
            return False
        self.loaded.pop(lora_path, None)
        return True


async def test_adapters_an_engine_uses_are_not_evicted(tmp_path):
    """The owner registry is the one protection of loaded folders: a busy engine keeps its
    adapter on disk over the bound; once idle, the engine unloads it and the folder goes."""
    sources = {
        n: MemorySource(lora_adapter_files(BASE, seed=i), f"mem://{n}") for i, n in enumerate("abc")
    }
    size = sum(len(d) for d in sources["a"].files.values())
    cache = make_cache(tmp_path, max_cache_bytes=int(size * 1.5))
    engine = FakeEngine()
    register_adapter_owner(engine)
    a = await get_loaded(cache, sources["a"], "a")
    engine.loaded[str(a)] = 0.0
    b = await cache.get(sources["b"], lora_name="b", base_model_name=BASE)  # leased: loading
    assert a.exists() and b.exists()  # over the bound, but "a" is in use
    release_lease(b)
    engine.busy = False
    c = await get_loaded(cache, sources["c"], "c")
    assert not a.exists() and c.exists() and engine.loaded == {}


def test_no_resolver_plugin_implements_engine_hooks_to_protect_folders():
    """Loaded folders are kept by the owner registry alone, not by a plugin hook."""
    for plugin in ("loraserve_s3_resolver", "loraserve_http_resolver", "loraserve_hf_hub_resolver"):
        module = pytest.importorskip(plugin)
        for hook in ("lora_adapter_loaded", "lora_adapter_evicted"):
            assert not registered_hook_functions(module, hook), (plugin, hook)


def lock_files(cache: DownloadCache) -> list[str]:
    return sorted(p.name for p in cache.store.locks.iterdir())


async def test_no_lock_files_left_for_missing_refused_or_failed_names(tmp_path, files):
    cache = make_cache(tmp_path)
    assert (
        await cache.get(MemorySource(None, "mem://nope"), lora_name="nope", base_model_name=BASE)
        is None
    )
    with pytest.raises(LoRAAdapterError):
        await cache.get(
            MemorySource({"adapter_config.json": files["adapter_config.json"]}, "mem://half"),
            lora_name="half",
            base_model_name=BASE,
        )
    failing = MemorySource(files, "mem://flaky")
    failing.fail = "transient"
    with pytest.raises(AdapterDownloadError):
        await cache.get(failing, lora_name="flaky", base_model_name=BASE)
    assert lock_files(cache) == []
    source = MemorySource(dict(files))
    await cache.get(source, lora_name="sql", base_model_name=BASE)
    assert len(lock_files(cache)) == 1  # the entry's lock stays as long as the entry
    source.files = None  # gone remotely: the entry and its lock go
    assert await cache.get(source, lora_name="sql", base_model_name=BASE) is None
    assert lock_files(cache) == []


async def test_evicted_entries_take_their_lock_files(tmp_path):
    sources = [MemorySource(lora_adapter_files(BASE, seed=i), f"mem://{i}") for i in range(4)]
    size = sum(len(d) for d in sources[0].files.values())
    cache = make_cache(tmp_path, max_cache_bytes=int(size * 1.5))
    for i, source in enumerate(sources):
        await get_loaded(cache, source, f"a{i}")
    assert [e.lora_name for _, _, e in cache.store.lru_entries()] == ["a3"]
    assert lock_files(cache) == [f"{cache.store.lru_entries()[0][1]}.lock"]


LOCKER = """
import sys, time
from pathlib import Path
from loraserve.resolution.download.store import try_lock

lock_path, counter, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for _ in range(rounds):
    while (lock := try_lock(lock_path)) is None:
        time.sleep(0.0005)
    value = int(counter.read_text())  # read, pause, write: lost updates unless exclusive
    time.sleep(0.0005)
    counter.write_text(str(value + 1))
    lock.unlink()  # every holder deletes the lock file, the worst case for waiters
    lock.release()
"""


def test_lock_files_unlinked_by_their_holder_still_exclude_other_processes(tmp_path):
    """Three processes, each deleting the lock file on every release: no update is lost."""
    import subprocess
    import sys

    counter = tmp_path / "counter"
    counter.write_text("0")
    args = [sys.executable, "-c", LOCKER, str(tmp_path / "k.lock"), str(counter), "150"]
    workers = [subprocess.Popen(args) for _ in range(3)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]
    assert counter.read_text() == "450"
    assert not (tmp_path / "k.lock").exists()


def test_a_lock_won_on_an_unlinked_file_is_not_the_lock(tmp_path, monkeypatch):
    """A locker that opened the file just before its holder deleted it wins the orphan's
    flock; it must notice and lock the path's current file instead (here held: so None)."""
    import os

    from loraserve.resolution.download.store import try_lock

    path = tmp_path / "k.lock"
    first = try_lock(path)
    stale = os.open(path, os.O_RDWR)  # a waiter's descriptor on the file about to go
    first.unlink()
    first.release()
    second = try_lock(path)  # a new file at the path, held
    real_open = os.open
    handed = iter([stale])
    monkeypatch.setattr(os, "open", lambda *args: next(handed, None) or real_open(*args))
    try:
        assert try_lock(path) is None  # the orphan's flock was free, but it is not the lock
        with pytest.raises(OSError):
            os.fstat(stale)  # and it was closed, not leaked
    finally:
        second.release()
    third = try_lock(path)
    assert third is not None
    third.release()


class Engine:
    """An LLM engine resolving adapters from a plain HTTP directory through the cache."""

    def __init__(self, tmp_path: Path, monkeypatch, count: int, cache_adapters: float) -> None:
        import functools
        import threading
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        from loraserve import LLM
        from loraserve.plugins import reset_plugin_manager
        from loraserve.testing import make_adapter, make_tiny_model

        pytest.importorskip("loraserve_http_resolver")
        self.model_dir = make_tiny_model(tmp_path / "model", seed=3)
        self.adapters = {
            f"a{i}": make_adapter(
                self.model_dir,
                tmp_path / "www" / BASE / f"a{i}",
                targets=("q_proj", "v_proj"),
                seed=10 + i,
                base_model_name=BASE,
            )
            for i in range(count)
        }
        served = ("adapter_config.json", "adapter_model.safetensors")  # what the cache fetches
        size = sum((self.adapters["a0"] / name).stat().st_size for name in served)
        self.bound = int(size * cache_adapters)

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

        www = str(tmp_path / "www")
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=www))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        port = self.httpd.server_address[1]
        self.downloads = tmp_path / "downloads"
        for name, value in {
            "VLLM_PLUGINS": "lora_http_resolver",
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_LORA_RESOLVER_HTTP_URL": f"http://127.0.0.1:{port}/{{base_model_name}}/{{lora_name}}",
            "VLLM_LORA_RESOLVER_DOWNLOAD_DIR": str(self.downloads),
            "VLLM_LORA_RESOLVER_MAX_CACHE_BYTES": str(self.bound),
        }.items():
            monkeypatch.setenv(name, value)
        reset_plugin_manager()
        self.llm = LLM(
            model=str(self.model_dir),
            enable_lora=True,
            served_model_name=BASE,
            max_loras=2,
            max_lora_rank=16,
        )
        self.manager = self.llm.engine.lora_manager

    def tokens(self, lora) -> list:
        from loraserve import SamplingParams

        params = SamplingParams(temperature=0, max_tokens=6)
        outputs = self.llm.generate(["the quick brown fox", "select"], params, lora_request=lora)
        return [out.outputs[0].token_ids for out in outputs]

    def cached_bytes(self) -> int:
        files = (self.downloads / "entries").rglob("*")
        return sum(f.stat().st_size for f in files if f.is_file() and f.name != "entry.json")

    def registered(self) -> set[str]:
        return {r.lora_name for r in self.manager.list()}

    def close(self) -> None:
        from loraserve.plugins import reset_plugin_manager

        self.httpd.shutdown()
        self.httpd.server_close()
        reset_plugin_manager()


def test_loaded_idle_adapters_are_unloaded_to_keep_the_cache_bound(tmp_path, monkeypatch):
    """Room for two adapters; four are resolved. LRU is by use, in-use ones stay, the evicted
    one is unregistered and comes back from the origin with the same output."""
    from loraserve.lora.request import LoRARequest
    from loraserve.resolution.download import get_download_cache

    engine = Engine(tmp_path, monkeypatch, count=4, cache_adapters=2.5)
    try:
        first = {name: engine.tokens(name) for name in ("a0", "a1")}
        engine.tokens("a0")  # served from the engine: the cache's mtime of a0 stays older
        engine.tokens("a2")
        assert engine.cached_bytes() <= engine.bound
        assert engine.registered() == {"a0", "a2"}  # a1 was used least recently

        held = engine.llm.engine.pin_lora(engine.manager.get("a0"), register=False)  # queued
        try:
            engine.tokens("a2")  # a0 is now the least recently used, but in use
            engine.tokens("a3")
            assert engine.registered() == {"a0", "a3"}
            assert Path(held.lora_path).is_dir()
            assert engine.cached_bytes() <= engine.bound
        finally:
            engine.llm.engine.unpin_lora(held)

        downloads = get_download_cache().stats["download"]
        again = engine.tokens("a1")  # unregistered: the resolvers fetch it again
        assert get_download_cache().stats["download"] == downloads + 1
        local = engine.tokens(LoRARequest("a1-local", 1, str(engine.adapters["a1"])))
        assert again == first["a1"] == local
        assert again != engine.tokens(None)
        assert engine.cached_bytes() <= engine.bound
        entries = sorted(p.name for p in (engine.downloads / "entries").iterdir())
        locks = sorted(p.stem for p in (engine.downloads / "locks").iterdir())
        assert locks == entries and len(entries) == 2
    finally:
        engine.close()
