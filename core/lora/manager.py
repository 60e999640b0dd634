"""Which adapters are known, which are parsed in host memory, which sit in device slots.

Three tiers, each bounded:
- registered: every adapter the engine may serve (by name);
- host cache: parsed adapters, at most ``max_cpu_loras``, least recently used evicted first,
  but never one that a queued or running request still needs;
- device slots: ``max_loras`` adapters a step can use; a slot held by a running sequence is
  pinned, others are reused least recently used first.
The download cache may unload a registered adapter that no request holds when its disk
bound needs that folder (``release_idle``); the next request resolves it again.
Parsing happens off the step loop (``ensure_host``); the scheduler only copies host tensors
into a slot (``acquire_slot``), which is cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from typing import Protocol

import torch

from loraserve import metrics
from loraserve.errors import (
    InvalidRequestError,
    LoRAAdapterError,
    LoRAAlreadyLoadedError,
    LoRANotFoundError,
)
from loraserve.lora.adapter import LoRAAdapter, load_adapter
from loraserve.lora.request import LoRARequest
from loraserve.lora.slots import AdapterSlots
from loraserve.model.spec import ModelSpec

logger = logging.getLogger(__name__)


class LoRAEvents(Protocol):
    """Who hears that an adapter was registered, unregistered or refused (the plugin manager).

    Moving parsed weights in and out of the host cache is internal and not reported.
    """

    def notify_loaded(self, lora_request: LoRARequest) -> None: ...

    def notify_evicted(self, lora_name: str) -> None: ...

    def notify_load_failed(self, lora_name: str, lora_path: str, error: BaseException) -> None: ...


class LoRAManager:
    def __init__(
        self,
        spec: ModelSpec,
        max_loras: int,
        max_lora_rank: int,
        max_cpu_loras: int,
        dtype: torch.dtype,
        device: torch.device,
        events: LoRAEvents | None = None,
    ) -> None:
        self.spec = spec
        self.max_lora_rank = max_lora_rank
        self.max_cpu_loras = max_cpu_loras
        self.slots = AdapterSlots(spec, max_loras, max_lora_rank, dtype, device)
        self.events = events
        self._lock = threading.RLock()
        self._registered: dict[str, LoRARequest] = {}
        self._host: OrderedDict[AdapterKey, LoRAAdapter] = OrderedDict()
        self._host_refs: Counter[AdapterKey] = Counter()
        self._slot_owner: list[AdapterKey | None] = [None] * max_loras
        self._slot_refs = [0] * max_loras
        self._slot_last_used = [0.0] * max_loras
        self._last_used: dict[str, float] = {}  # registered name -> monotonic time of last use
        self._loading: dict[str, threading.Event] = {}  # names being parsed -> set when done

    # ---- registry ------------------------------------------------------------------
    def add(self, request: LoRARequest, exclusive: bool = False) -> LoRARequest:
        """Parse, validate and register an adapter; raises LoRAAdapterError, changing nothing.

        One load per name at a time: a concurrent ``add`` of the same name waits for the
        first and gets its outcome. With ``exclusive`` (the load endpoint's rule) a name
        that is registered or being loaded is a LoRAAlreadyLoadedError instead.
        """
        name = request.lora_name
        while True:
            with self._lock:
                known, loading = self._registered.get(name), self._loading.get(name)
                if exclusive and (known is not None or loading is not None):
                    raise LoRAAlreadyLoadedError(name)
                if known is not None:
                    if known.lora_path != request.lora_path:
                        raise InvalidRequestError(
                            f"LoRA adapter {name!r} is already loaded from {known.lora_path!r}; "
                            f"unload it first to load it from {request.lora_path!r}"
                        )
                    return known
                if loading is None:
                    self._loading[name] = threading.Event()
                    break
            loading.wait()
        try:
            adapter = self._parse(request)
            with self._lock:
                self._registered[name] = request
                self._last_used[name] = time.monotonic()
                self._put_host(_key(request), adapter)
                metrics.ADAPTER_LABELS.register(name)
        finally:
            with self._lock:
                self._loading.pop(name).set()
        if self.events:
            self.events.notify_loaded(request)
        return request

    def wait_loaded(self, name: str, timeout_s: float | None = None) -> LoRARequest | None:
        """The registered request once any load of ``name`` in progress has finished."""
        with self._lock:
            loading = self._loading.get(name)
        if loading is not None:
            loading.wait(timeout_s)
        return self.get(name)

    def remove(self, name: str) -> LoRARequest:
        """Forget an adapter; requests already using it keep their weights until they finish."""
        with self._lock:
            request = self._forget(name)
            if request is None:
                raise LoRANotFoundError(name, "No LoRA adapter with this name is loaded.")
        if self.events:
            self.events.notify_evicted(name)
        return request

    def _forget(self, name: str) -> LoRARequest | None:
        """Unregister ``name`` (lock held); its host copy goes unless a request still holds it."""
        request = self._registered.pop(name, None)
        if request is None:
            return None
        self._last_used.pop(name, None)
        metrics.ADAPTER_LABELS.unregister(name)  # its per-model series go with it
        if self._host_refs[_key(request)] == 0:
            self._drop_host(_key(request))
        return request

    def get(self, name: str) -> LoRARequest | None:
        """The registered request; a lookup counts as use (a request pins it right after)."""
        with self._lock:
            request = self._registered.get(name)
            if request is not None:
                self._last_used[name] = time.monotonic()
            return request

    def list(self) -> list[LoRARequest]:
        with self._lock:
            return list(self._registered.values())

    # ---- room in the download cache (called from its eviction thread) -----------------
    def last_used(self, lora_path: str) -> float | None:
        """When the adapter registered from ``lora_path`` was last used; None if none is."""
        with self._lock:
            name = self._name_of(lora_path)
            return None if name is None else self._last_used.get(name, 0.0)

    def release_idle(self, lora_path: str, unused_since: float) -> bool:
        """Unregister the adapter loaded from ``lora_path`` if no request holds it and none
        has used it since ``unused_since`` (monotonic); True if it is no longer registered.

        The check and the removal happen under one lock hold, so a request can never pin
        an adapter that is being released; a later request resolves it again.
        """
        with self._lock:
            name = self._name_of(lora_path)
            if name is None:
                return True
            in_use = self._host_refs[_key(self._registered[name])] > 0
            if in_use or self._last_used.get(name, 0.0) >= unused_since:
                return False
            self._forget(name)
        logger.info("unloaded idle LoRA adapter %r to make room in the download cache", name)
        if self.events:
            self.events.notify_evicted(name)
        return True

    def _name_of(self, lora_path: str) -> str | None:
        return next((n for n, r in self._registered.items() if r.lora_path == lora_path), None)

    # ---- host cache ------------------------------------------------------------------
    # Host entries and slots are keyed by (name, id), not by name: after an unload and a
    # new load under the same name, requests still running keep the old weights and new
    # ones get the new weights, never a mix.
    def pin(self, name: str) -> LoRARequest:
        """The registered adapter ``name``, host-resident and pinned for one more request.

        Lookup and pin are one step under the lock, so an idle adapter that is being
        released (``release_idle``) is either pinned first or reported missing, never lost
        between the two. Raises LoRANotFoundError.
        """
        with self._lock:
            request = self._registered.get(name)
            if request is None:
                raise LoRANotFoundError(name)
            self._host_refs[_key(request)] += 1
        self._ensure_resident(request)
        return request

    def ensure_host(self, request: LoRARequest) -> None:
        """Make the adapter host-resident and pin it there for one more request."""
        with self._lock:
            self._host_refs[_key(request)] += 1
        self._ensure_resident(request)

    def _ensure_resident(self, request: LoRARequest) -> None:
        """With a pin already counted (so nothing releases it meanwhile), parse it if needed."""
        key = _key(request)
        with self._lock:
            self._mark_used(request)
            if key in self._host:
                self._host.move_to_end(key)
                return
        try:
            adapter = self._parse(request)  # evicted earlier: read it again, outside the lock
        except BaseException:
            self.release_host(request)
            raise
        with self._lock:
            self._put_host(key, adapter)

    def release_host(self, request: LoRARequest) -> None:
        key = _key(request)
        with self._lock:
            self._mark_used(request)
            self._host_refs[key] -= 1
            if self._host_refs[key] <= 0:
                del self._host_refs[key]
                if self._registered.get(request.lora_name) != request:
                    self._drop_host(key)
                else:
                    self._shrink_host()

    def _mark_used(self, request: LoRARequest) -> None:
        if self._registered.get(request.lora_name) == request:
            self._last_used[request.lora_name] = time.monotonic()

    def _parse(self, request: LoRARequest) -> LoRAAdapter:
        start = time.perf_counter()
        try:
            adapter = load_adapter(request, self.spec, self.max_lora_rank)
        except LoRAAdapterError as exc:
            metrics.LORA_LOADS.labels(outcome="error").inc()
            logger.warning("refused %s", exc)
            if self.events:
                self.events.notify_load_failed(request.lora_name, request.lora_path, exc)
            raise
        seconds = time.perf_counter() - start
        metrics.LORA_LOADS.labels(outcome="ok").inc()
        metrics.LORA_LOAD_SECONDS.observe(seconds)
        logger.info(
            "Loaded LoRA adapter %r from %r: rank %d, %d modules, in %.3f s",
            request.lora_name, request.lora_path, adapter.rank, len(adapter.target_modules), seconds,
        )
        return adapter

    def _put_host(self, key: AdapterKey, adapter: LoRAAdapter) -> None:
        if key in self._host:  # another request of the same adapter parsed it meanwhile
            self._host.move_to_end(key)
            return
        self._host[key] = adapter
        self._host.move_to_end(key)
        self._shrink_host(keep=key)

    def _shrink_host(self, keep: AdapterKey | None = None) -> None:
        """Evict unpinned adapters, least recently used first, down to max_cpu_loras."""
        excess = len(self._host) - self.max_cpu_loras
        idle = [k for k in self._host if self._host_refs[k] == 0 and k != keep]
        for key in idle[: max(excess, 0)]:
            self._drop_host(key)
            metrics.LORA_EVICTIONS.labels(tier="cpu").inc()

    def _drop_host(self, key: AdapterKey) -> None:
        self._host.pop(key, None)
        for slot, owner in enumerate(self._slot_owner):
            if owner == key and self._slot_refs[slot] == 0:
                self._slot_owner[slot] = None

    def usage(self) -> tuple[int, int, int]:
        """(adapters registered, device slots in use by a sequence, device slots), for the log."""
        with self._lock:
            registered = len(self._registered)
        return registered, sum(1 for refs in self._slot_refs if refs > 0), len(self._slot_refs)

    @property
    def num_host_adapters(self) -> int:
        return len(self._host)

    @property
    def num_pinned_host_adapters(self) -> int:
        """Host-cached adapters that a queued or running request still needs (never evicted)."""
        with self._lock:
            return sum(1 for refs in self._host_refs.values() if refs > 0)

    # ---- device slots (called by the scheduler, on the step thread) -------------------
    def acquire_slot(self, request: LoRARequest) -> int | None:
        """Pin a slot holding the adapter for one sequence, writing it if needed; None if all pinned."""
        key = _key(request)
        slot = self._slot_of(key)
        if slot is None:
            free = [s for s, refs in enumerate(self._slot_refs) if refs == 0]
            if not free:
                return None
            slot = min(free, key=lambda s: (self._slot_owner[s] is not None, self._slot_last_used[s]))
            with self._lock:
                adapter = self._host[key]
            if self._slot_owner[slot] is not None:
                metrics.LORA_EVICTIONS.labels(tier="gpu").inc()
            self.slots.write(slot, adapter)
            self._slot_owner[slot] = key
        self._slot_refs[slot] += 1
        self._slot_last_used[slot] = time.monotonic()
        return slot

    def release_slot(self, slot: int) -> None:
        self._slot_refs[slot] -= 1
        self._slot_last_used[slot] = time.monotonic()

    def _slot_of(self, key: AdapterKey) -> int | None:
        try:
            return self._slot_owner.index(key)
        except ValueError:
            return None


AdapterKey = tuple[str, int]


def _key(request: LoRARequest) -> AdapterKey:
    return (request.lora_name, request.lora_int_id)
