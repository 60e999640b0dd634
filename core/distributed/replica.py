"""One engine replica under Ray Serve: the serving core over its own ``AsyncLLMEngine``.

Adapters come and go through Serve's model multiplexing (a per-replica LRU of
``max_adapters``). A cold adapter is first resolved and downloaded (single-flight per name,
outside the multiplexer's one-load-at-a-time lock, so a slow fetch never holds other cold
loads back), then registered inside the loader; the LRU's release unregisters it, once however
often Serve calls it. Adapters loaded through the API sit in the shared registry folder and are
applied before each request, so every replica, new or restarted, serves them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable

import ray
from prometheus_client import generate_latest
from ray import serve

from loraserve import metrics
from loraserve.distributed.registry import AdapterRegistry
from loraserve.entrypoints.openai.errors import error_response
from loraserve.entrypoints.openai.responses import ByteStream, ServingResponse
from loraserve.entrypoints.openai.serving import OpenAIServing
from loraserve.errors import LoRANotFoundError
from loraserve.lora.request import LoRARequest
from loraserve.resolution.service import LoRAResolutionService

logger = logging.getLogger(__name__)

REPLICA_HEADER = "x-loraserve-replica"
REPORT_PERIOD_S = 1.0  # how often a replica writes its adapters and metrics to the registry


class AdapterHandle:
    """What the multiplexer keeps per adapter; releasing it unregisters the adapter, once."""

    def __init__(self, release: Callable[[], None] | None) -> None:
        self._release = release  # None: the adapter is not the LRU's to drop

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    __del__ = release  # Serve calls it on eviction, and the collector again later


async def _coalesced(stream: ByteStream) -> AsyncIterator[bytes]:
    """The stream's chunks, those already waiting joined into one (fewer Ray messages)."""
    ready: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump() -> None:
        try:
            async for chunk in stream:
                ready.put_nowait(chunk)
        finally:
            ready.put_nowait(done)

    task = asyncio.ensure_future(pump())
    try:
        while True:
            item = await ready.get()
            if item is done:
                break
            parts = [item]
            while not ready.empty():
                nxt = ready.get_nowait()
                if nxt is done:
                    ready.put_nowait(done)
                    break
                parts.append(nxt)
            yield b"".join(parts)
        await task  # a failure of the stream reaches the caller
    finally:
        task.cancel()
        await stream.aclose()


@serve.deployment
class LoRAReplica:
    async def __init__(self, engine_config, server_config, state_dir: str,  # noqa: ANN001
                       max_adapters: int) -> None:
        import torch

        from loraserve.engine.async_engine import AsyncLLMEngine

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))  # the replica's share, not the whole node
        self.engine = await asyncio.to_thread(AsyncLLMEngine, engine_config)
        self.serving = OpenAIServing(self.engine, server_config)
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.registry = AdapterRegistry(state_dir)
        self._applied: dict[str, float] = {}  # registry entry -> the time of the entry applied
        self._registry_version = -1
        self._syncing = asyncio.Lock()
        self.loads: Counter[str] = Counter()  # adapter -> registrations by the multiplexer
        self.unloads: Counter[str] = Counter()
        self._fetched: dict[str, LoRARequest] = {}
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()  # adapters came or went: report now, not next period
        self._fetch = LoRAResolutionService(self.engine.served_model_name, load=self._downloaded)

        async def load(model_id: str) -> AdapterHandle:  # a function: Serve keeps its LRU on it
            return await self._register(model_id)

        self._adapter = serve.multiplexed(max_num_models_per_replica=max_adapters)(load)
        await self.serving.models.load_static(server_config.lora_modules)
        await self._sync_registry()
        self._report()
        self._reporter = asyncio.ensure_future(self._report_loop())

    # ---- requests ------------------------------------------------------------------------
    async def handle(self, method: str, path: str, body: object) -> AsyncIterator[object]:
        """Yields ``(status, headers)``, then the body: one chunk, or the SSE stream."""
        response = await self._answer(method, path, body)
        yield response.status, {**response.headers, REPLICA_HEADER: self.replica_id}
        if response.stream is None:
            yield response.body
            return
        async for chunk in _coalesced(response.stream):
            yield chunk

    async def _answer(self, method: str, path: str, body: object) -> ServingResponse:
        try:
            await self._sync_registry()
            adapter = serve.get_multiplexed_model_id()
            if adapter and adapter not in self.serving.models.base_model_names:
                if self._manager_get(adapter) is None:
                    await self._prefetch(adapter)  # outside the multiplexer's lock
                await self._adapter(adapter)
        except Exception as exc:
            return error_response(exc)
        return await self.serving.handle(method, path, body)

    # ---- the multiplexed adapters --------------------------------------------------------
    def _manager_get(self, name: str) -> LoRARequest | None:
        manager = self.engine.engine.lora_manager
        return manager.get(name) if manager is not None else None

    async def _downloaded(self, found: LoRARequest) -> LoRARequest:
        """The resolution service's last step here: remember where the files are, register
        later. (The download cache's lease ends now, not at registration: only a disk bound
        reached in between could evict the folder, and the loader then fetches it again.)"""
        self._fetched[found.lora_name] = found
        return found

    async def _prefetch(self, name: str) -> LoRARequest:
        """Resolve and download ``name`` (single-flight per name); raises the 404 or 400."""
        if not self.serving.models.allow_runtime_lora_updating:
            raise LoRANotFoundError(name)
        return await self._fetch.resolve(name)

    async def _register(self, name: str) -> AdapterHandle:
        """Serve's loader, under its per-replica lock: register files already fetched."""
        if name in self.serving.models.base_model_names or self._manager_get(name) is not None:
            return AdapterHandle(None)  # the base model, or loaded through the API
        found = self._fetched.pop(name, None) or await self._prefetch(name)
        self._fetched.pop(name, None)
        if not os.path.isdir(found.lora_path):  # evicted from the download cache meanwhile
            self._fetch.forget(name)
            found = await self._prefetch(name)
        await self.serving.models.add(name, found.lora_path)
        self._fetch.forget(name)
        self.loads[name] += 1
        self._changed.set()
        return AdapterHandle(lambda: self._unregister(name))

    def _unregister(self, name: str) -> None:
        """The LRU evicted ``name``: running requests keep its weights until they finish."""
        self.unloads[name] += 1
        try:
            self.engine.engine.lora_manager.remove(name)
        except LoRANotFoundError:  # unloaded through the API meanwhile
            pass
        self._loop.call_soon_threadsafe(self._changed.set)  # Serve calls this on a thread

    # ---- the shared registry ---------------------------------------------------------------
    async def _sync_registry(self) -> None:
        """Apply the registry entries this replica has not applied yet."""
        if self.registry.version() == self._registry_version:
            return
        async with self._syncing:
            version = self.registry.version()
            if version == self._registry_version:
                return
            for name, (path, when) in self.registry.entries().items():
                if self._applied.get(name) == when:
                    continue
                await self._apply(name, path)
                self._applied[name] = when
                self._changed.set()
            self._registry_version = version

    async def _apply(self, name: str, path: str | None) -> None:
        loaded = self._manager_get(name)
        if loaded is not None and loaded.lora_path != path:
            await self.engine.remove_lora(name)
            loaded = None
        if path is not None and loaded is None:
            try:
                await self.serving.models.add(name, path)
            except Exception:  # the ingress checked it on one replica; say why it fails here
                logger.exception("Replica %s cannot load registry adapter %r from %r",
                                 self.replica_id, name, path)

    # ---- what the router and the ingress see -----------------------------------------------
    def record_routing_stats(self) -> dict:
        """Serve's hook: polled every ``request_routing_stats_period_s`` for the router."""
        engine = self.engine.engine
        return {
            "queue": engine.num_waiting,
            "running": engine.num_running,
            "adapters": [lr.lora_name for lr in self.engine.list_loras()],
            "kv_usage": engine.scheduler.blocks.usage,
        }

    def _report(self) -> None:
        self.registry.report(
            self.replica_id,
            [(lr.lora_name, lr.lora_path) for lr in self.engine.list_loras()],
            generate_latest(metrics.REGISTRY).decode(),
            extra={"loads": dict(self.loads), "unloads": dict(self.unloads),
                   "running": self.engine.engine.num_running,
                   "waiting": self.engine.engine.num_waiting},
        )

    async def _report_loop(self) -> None:
        """Apply the registry and report, every period or at once after a change."""
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), REPORT_PERIOD_S)
            except asyncio.TimeoutError:
                pass
            self._changed.clear()
            try:
                await self._sync_registry()
                await asyncio.to_thread(self._report)
            except Exception:  # a full disk must not end the replica
                logger.exception("Replica %s cannot write its report", self.replica_id)

    async def __del__(self) -> None:
        """Serve's shutdown hook (also after a failed ``__init__``: parts may be missing)."""
        if hasattr(self, "_reporter"):
            self._reporter.cancel()
            self.registry.forget_replica(self.replica_id)
        if hasattr(self, "engine"):
            await self.engine.shutdown()
