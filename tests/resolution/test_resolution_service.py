"""The resolution path: order and fallback, single flight, short negative cache."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from loraserve.errors import AdapterDownloadError, LoRAAdapterError, LoRANotFoundError, PluginError
from loraserve.lora.ids import LoRAIdAllocator
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver, LoRAResolverRegistry
from loraserve.plugins import reset_plugin_manager
from loraserve.resolution.service import LoRAResolutionService

BASE = "tiny-base"


class Resolver(LoRAResolver):
    """Knows some names; can fail, be slow, or answer with a path the loader rejects."""

    def __init__(self, knows=(), raises=False, gate: asyncio.Event | None = None) -> None:
        self.knows = set(knows)
        self.raises = raises
        self.gate = gate
        self.calls: Counter[str] = Counter()

    async def resolve_lora(self, base_model_name, lora_name):
        self.calls[lora_name] += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.raises:
            raise ConnectionError("bucket unreachable")
        if lora_name in self.knows:
            return LoRARequest(lora_name, 1, f"/adapters/{id(self)}/{lora_name}")
        return None


class Loader:
    """The engine's load: refuses paths containing 'bad', assigns ids from an allocator."""

    def __init__(self) -> None:
        self.ids = LoRAIdAllocator()
        self.loaded: list[LoRARequest] = []

    async def __call__(self, request: LoRARequest) -> LoRARequest:
        await asyncio.sleep(0)
        if "bad" in request.lora_path:
            raise LoRAAdapterError(request.lora_name, "rank 64 exceeds --max-lora-rank 16")
        registered = LoRARequest(
            request.lora_name, self.ids.allocate(), request.lora_path, request.base_model_name
        )
        self.loaded.append(registered)
        return registered


class BadPathResolver(Resolver):
    async def resolve_lora(self, base_model_name, lora_name):
        self.calls[lora_name] += 1
        return LoRARequest(lora_name, 7, "/bad/" + lora_name)


def service(resolvers, loader, **kwargs) -> LoRAResolutionService:
    named = [(f"r{i}", r) for i, r in enumerate(resolvers)]
    return LoRAResolutionService(BASE, loader, resolvers=lambda: named, **kwargs)


async def test_first_loadable_answer_wins_after_fallbacks():
    none, raising, bad = Resolver(), Resolver(knows={"sql"}, raises=True), BadPathResolver()
    good, later = Resolver(knows={"sql"}), Resolver(knows={"sql"})
    loader = Loader()
    request = await service([none, raising, bad, good, later], loader).resolve("sql")
    assert request.lora_path == f"/adapters/{id(good)}/sql"
    assert request.base_model_name == BASE and request.lora_int_id == 1
    assert [r.calls["sql"] for r in (none, raising, bad, good, later)] == [1, 1, 1, 1, 0]
    assert loader.loaded == [request]


async def test_nothing_found_names_the_model_and_why():
    svc = service([Resolver(), Resolver(raises=True)], Loader())
    with pytest.raises(LoRANotFoundError) as info:
        await svc.resolve("ghost")
    message = str(info.value)
    assert "`ghost`" in message and "r1" in message
    assert info.value.model_name == "ghost"


async def test_found_but_refused_is_an_adapter_error_with_every_reason():
    """vLLM answers 400 "was found but could not be loaded", not 404, and so do we."""
    svc = service([Resolver(), Resolver(raises=True), BadPathResolver()], Loader())
    with pytest.raises(LoRAAdapterError, match="'ghost': was found but could not be loaded") as info:
        await svc.resolve("ghost")
    assert "r2" in str(info.value) and "rank 64" in str(info.value) and "'r1' failed" in str(info.value)
    with pytest.raises(LoRAAdapterError):  # remembered for the TTL, as a refusal
        await svc.resolve("ghost")


class UnreachableResolver(Resolver):
    async def resolve_lora(self, base_model_name, lora_name):
        self.calls[lora_name] += 1
        raise AdapterDownloadError(lora_name, "s3://bucket/x", "HTTP 500 after 3 retries")


async def test_a_failed_download_is_a_download_error_unless_another_resolver_has_it():
    unreachable = UnreachableResolver()
    with pytest.raises(AdapterDownloadError, match="s3://bucket/x failed: HTTP 500"):
        await service([Resolver(), unreachable], Loader()).resolve("ghost")
    good = Resolver(knows={"ghost"})
    request = await service([unreachable, good], Loader()).resolve("ghost")
    assert request.lora_path == f"/adapters/{id(good)}/ghost"


async def test_no_resolvers_is_not_found():
    with pytest.raises(LoRANotFoundError):
        await service([], Loader()).resolve("ghost")


async def test_single_flight_for_fifty_concurrent_requests():
    gate = asyncio.Event()
    slow = Resolver(knows={"cold", "other"}, gate=gate)
    fast = Resolver(knows={"quick"})
    loader = Loader()
    svc = LoRAResolutionService(BASE, loader, resolvers=lambda: [("fast", fast), ("slow", slow)])
    waiting = [asyncio.ensure_future(svc.resolve("cold")) for _ in range(50)]
    await asyncio.sleep(0.01)
    # another name is not blocked by the cold one's resolution
    quick = await asyncio.wait_for(svc.resolve("quick"), timeout=1)
    assert quick.lora_name == "quick"
    gate.set()
    results = await asyncio.gather(*waiting)
    assert slow.calls["cold"] == 1
    assert [r.lora_name for r in loader.loaded].count("cold") == 1
    assert len({id(r) for r in results}) == 1


async def test_a_cancelled_waiter_does_not_cancel_the_resolution():
    gate = asyncio.Event()
    slow = Resolver(knows={"cold"}, gate=gate)
    loader = Loader()
    svc = service([slow], loader)
    first = asyncio.ensure_future(svc.resolve("cold"))
    second = asyncio.ensure_future(svc.resolve("cold"))
    await asyncio.sleep(0.01)
    first.cancel()
    gate.set()
    assert (await second).lora_name == "cold"
    assert slow.calls["cold"] == 1


async def test_negative_result_expires_after_ttl():
    now = [1000.0]
    resolver = Resolver()
    svc = service([resolver], Loader(), negative_ttl_s=5.0, clock=lambda: now[0])
    with pytest.raises(LoRANotFoundError):
        await svc.resolve("late")
    resolver.knows.add("late")  # the adapter is uploaded now
    now[0] += 4.0
    with pytest.raises(LoRANotFoundError):
        await svc.resolve("late")
    assert resolver.calls["late"] == 1  # remembered, resolvers not asked again
    now[0] += 1.5
    assert (await svc.resolve("late")).lora_name == "late"
    assert resolver.calls["late"] == 2


async def test_negative_cache_is_bounded_and_can_be_disabled():
    resolver = Resolver()
    svc = service([resolver], Loader(), max_negative_entries=3)
    for name in "abcde":
        with pytest.raises(LoRANotFoundError):
            await svc.resolve(name)
    assert len(svc._missing) == 3
    off = service([resolver], Loader(), negative_ttl_s=0)
    for _ in range(2):
        with pytest.raises(LoRANotFoundError):
            await off.resolve("z")
    assert resolver.calls["z"] == 2


async def test_forget_drops_a_remembered_miss():
    resolver = Resolver()
    svc = service([resolver], Loader())
    with pytest.raises(LoRANotFoundError):
        await svc.resolve("x")
    resolver.knows.add("x")
    svc.forget("x")
    assert (await svc.resolve("x")).lora_name == "x"


async def test_answer_under_another_name_is_served_under_the_asked_name():
    class Renaming(LoRAResolver):
        async def resolve_lora(self, base_model_name, lora_name):
            return LoRARequest("other", 5, "/adapters/other", "explicit-base")

    request = await service([Renaming()], Loader()).resolve("asked")
    assert request.lora_name == "asked" and request.base_model_name == "explicit-base"


async def test_invalid_answer_is_skipped():
    class Wrong(LoRAResolver):
        async def resolve_lora(self, base_model_name, lora_name):
            return {"lora_path": "/x"}

    good = Resolver(knows={"x"})
    assert (await service([Wrong(), good], Loader()).resolve("x")).lora_name == "x"


async def test_plugin_errors_propagate_and_are_not_remembered():
    calls = []

    def resolvers():
        calls.append(1)
        raise PluginError("VLLM_LORA_RESOLVER_CACHE_DIR='/nope' does not exist")

    svc = LoRAResolutionService(BASE, Loader(), resolvers=resolvers)
    for _ in range(2):
        with pytest.raises(PluginError):
            await svc.resolve("x")
    assert len(calls) == 2


async def test_default_source_is_the_plugin_manager(monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "")
    reset_plugin_manager()
    LoRAResolverRegistry.register_resolver("test_user_resolver", Resolver(knows={"mine"}))
    try:
        request = await LoRAResolutionService(BASE, Loader()).resolve("mine")
        assert request.lora_name == "mine"
    finally:
        LoRAResolverRegistry.resolvers.pop("test_user_resolver")
        reset_plugin_manager()
