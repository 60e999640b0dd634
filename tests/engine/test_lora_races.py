"""Adapter loads, unloads and lookups that race each other: one load per name wins, and a
request for an adapter a resolver still finds is served, never a spurious 400 or 404."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from loraserve.config import EngineConfig
from loraserve.engine.async_engine import AsyncLLMEngine
from loraserve.engine.llm_engine import LLMEngine
from loraserve.errors import LoRAAlreadyLoadedError, LoRANotFoundError
from loraserve.lora import adapter as adapter_module
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver
from loraserve.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


class Events:
    def __init__(self) -> None:
        self.loaded: list[str] = []

    def notify_loaded(self, lora_request) -> None:
        self.loaded.append(lora_request.lora_name)

    def notify_evicted(self, lora_name) -> None:
        pass

    def notify_load_failed(self, lora_name, lora_path, error) -> None:
        pass


@pytest.fixture
def slow_parse(monkeypatch):
    """Parsing takes a while, as a large adapter does, so concurrent calls overlap."""
    real = adapter_module.load_adapter

    def load_adapter(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr("loraserve.lora.manager.load_adapter", load_adapter)


def _config(llama_dir, **kw) -> EngineConfig:
    return EngineConfig(model=str(llama_dir), served_model_name="base", enable_lora=True,
                        max_loras=2, max_lora_rank=16, max_num_seqs=8, **kw)


def test_concurrent_loads_of_one_name_load_it_once(llama_dir, adapter_dirs, slow_parse):
    events = Events()
    engine = LLMEngine(_config(llama_dir), lora_events=events)
    request = LoRARequest("sql", 1, str(adapter_dirs["sql"]))
    results: list[object] = []
    start = threading.Barrier(16)

    def load() -> None:
        start.wait()
        try:
            results.append(engine.load_lora(request))
        except LoRAAlreadyLoadedError as exc:
            results.append(exc)

    threads = [threading.Thread(target=load) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded = [r for r in results if isinstance(r, LoRARequest)]
    assert len(loaded) == 1
    assert all("has already been loaded" in str(r) for r in results if r not in loaded)
    assert events.loaded == ["sql"]
    assert engine.lora_manager.num_host_adapters == 1


def test_a_lookup_racing_an_idle_release_never_reads_a_deleted_folder(
    llama_dir, adapter_dirs, tmp_path, monkeypatch
):
    """release_idle may unload an adapter and its folder be deleted at once (the download
    cache does that): a request either pins the adapter first or finds it gone (404)."""
    import shutil

    engine = LLMEngine(_config(llama_dir, max_cpu_loras=2))
    manager = engine.lora_manager
    real_get = manager.get

    def slow_get(name):  # widen the window between looking the adapter up and pinning it
        found = real_get(name)
        time.sleep(0.002)
        return found

    monkeypatch.setattr(manager, "get", slow_get)
    outcomes: list[str] = []
    for round_ in range(25):
        folder = tmp_path / f"copy-{round_}"
        shutil.copytree(adapter_dirs["sql"], folder)
        request = engine.load_lora(LoRARequest("sql", 1, str(folder)))

        def release(path: str) -> None:
            if manager.release_idle(path, unused_since=time.monotonic() + 1):
                shutil.rmtree(path)

        releaser = threading.Timer(0.001, release, args=(request.lora_path,))
        releaser.start()
        try:
            pinned = engine.pin_lora(LoRARequest("sql", 1, "unused"), register=False)
            outcomes.append("pinned")
            engine.unpin_lora(pinned)
        except LoRANotFoundError:
            outcomes.append("gone")
        releaser.join()
        if manager.get("sql") is not None:
            manager.remove("sql")
    assert set(outcomes) <= {"pinned", "gone"}  # never a LoRAAdapterError for a missing path


class FolderResolver(LoRAResolver):
    """Finds every adapter of one folder, as the filesystem resolver does."""

    def __init__(self, folders: dict[str, str]) -> None:
        self.folders = folders

    async def resolve_lora(self, base_model_name, lora_name):
        path = self.folders.get(lora_name)
        return LoRARequest(lora_name, 1, path, base_model_name) if path else None


@pytest.fixture
def async_engine(llama_dir, adapter_dirs):
    engine = AsyncLLMEngine(_config(llama_dir, allow_runtime_lora_updating=True))
    resolver = FolderResolver({"sql": str(adapter_dirs["sql"])})
    engine._resolution._resolvers = lambda: [("folder", resolver)]
    yield engine
    asyncio.run(engine.shutdown())


async def _generate(engine, lora, request_id):
    final = None
    async for out in engine.generate([1, 2, 3], GREEDY, request_id, lora):
        final = out
    return final.outputs[0]


async def test_a_request_for_an_adapter_unloaded_after_its_lookup_is_resolved_again(async_engine):
    lora = await async_engine.resolve_model("sql", allow_resolvers=True)
    first = await _generate(async_engine, lora, "before")
    await async_engine.remove_lora("sql")  # between this request's lookup and its pin
    again = await _generate(async_engine, lora, "after")
    assert again.token_ids == first.token_ids
    assert async_engine.engine.lora_manager.get("sql") is not None


async def test_a_resolution_racing_an_explicit_load_serves_the_loaded_copy(
    async_engine, adapter_dirs, slow_parse
):
    explicit = asyncio.ensure_future(
        async_engine.add_lora(LoRARequest("sql", 1, str(adapter_dirs["sql"])))
    )
    await asyncio.sleep(0.01)  # the explicit load is parsing now
    resolved = await async_engine.resolve_model("sql", allow_resolvers=True)
    loaded = await explicit
    assert resolved == loaded
    out = await _generate(async_engine, resolved, "raced")
    assert out.finish_reason == "length"
