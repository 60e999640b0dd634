"""Unknown model name -> resolvers -> a loaded adapter: the core's resolution path.

Invariants: one resolution (and one load) per name at a time, however many requests wait
for it; other names proceed meanwhile; a "not found" is remembered only for a short TTL,
so an adapter copied into place a moment later is found on the next request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from loraserve.errors import (
    AdapterDownloadError,
    LoRAAdapterError,
    LoRANotFoundError,
    LoRAServeError,
)
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver
from loraserve.resolution.download.lease import release_lease

logger = logging.getLogger(__name__)

ResolverSource = Callable[[], Sequence[tuple[str, LoRAResolver]]]
LoadAdapter = Callable[[LoRARequest], Awaitable[LoRARequest]]

DEFAULT_NEGATIVE_TTL_S = 5.0


def plugin_resolvers() -> Sequence[tuple[str, LoRAResolver]]:
    """The plugin manager's resolvers, in order (imports resolver plugins on first call)."""
    from loraserve.plugins import get_plugin_manager

    return get_plugin_manager().resolvers()


class LoRAResolutionService:
    """Finds and loads adapters that are neither the base model nor already loaded.

    ``load`` is the engine's: it loads the request's adapter, gives it a unique int id and
    returns the registered request, raising ``LoRAAdapterError`` when the adapter is refused.
    """

    def __init__(
        self,
        base_model_name: str,
        load: LoadAdapter,
        resolvers: ResolverSource = plugin_resolvers,
        negative_ttl_s: float = DEFAULT_NEGATIVE_TTL_S,
        max_negative_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_model_name = base_model_name
        self._load = load
        self._resolvers = resolvers
        self._negative_ttl_s = negative_ttl_s
        self._max_negative_entries = max_negative_entries
        self._clock = clock
        self._inflight: dict[str, asyncio.Task[LoRARequest]] = {}
        self._missing: OrderedDict[str, tuple[float, ErrorFactory]] = OrderedDict()  # -> (expiry, error)

    async def resolve(self, lora_name: str) -> LoRARequest:
        """The loaded request for ``lora_name``.

        Raises ``LoRANotFoundError`` if no resolver has it, ``LoRAAdapterError`` if one found
        it but it was refused, ``AdapterDownloadError`` if only a download failed.
        """
        failure = self._recent_failure(lora_name)
        if failure is not None:
            raise failure()
        task = self._inflight.get(lora_name)
        if task is None:
            task = asyncio.ensure_future(self._resolve_once(lora_name))
            self._inflight[lora_name] = task
            task.add_done_callback(lambda done: self._finished(lora_name, done))
        # shield: a caller that goes away must not cancel the resolution the others wait for
        return await asyncio.shield(task)

    def forget(self, lora_name: str) -> None:
        """Drop a remembered "not found" for ``lora_name`` (e.g. after an explicit load)."""
        self._missing.pop(lora_name, None)

    def _finished(self, lora_name: str, task: asyncio.Task[LoRARequest]) -> None:
        if self._inflight.get(lora_name) is task:
            del self._inflight[lora_name]
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is not reported as lost

    async def _resolve_once(self, lora_name: str) -> LoRARequest:
        outcome = _Outcome()
        # the first call imports resolver plugins: keep that off the event loop
        for resolver_name, resolver in await asyncio.to_thread(self._resolvers):
            found = await self._ask(resolver_name, resolver, lora_name, outcome)
            if found is None:
                continue
            try:
                loaded = await self._load_leased(found)
            except LoRAAdapterError as exc:
                logger.warning(
                    "Resolver '%s' found %r but it failed to load: %s", resolver_name, lora_name, exc
                )
                outcome.refused.append(f"resolver '{resolver_name}': {exc.reason}")
                continue
            except Exception:
                logger.exception(
                    "Resolver '%s' found %r but loading it raised", resolver_name, lora_name
                )
                outcome.refused.append(
                    f"resolver '{resolver_name}': loading it raised (see the server log)"
                )
                continue
            logger.info(
                "Resolved LoRA adapter %r with resolver '%s' from %s",
                lora_name,
                resolver_name,
                found.lora_path,
            )
            return loaded
        error = outcome.error_factory(lora_name)
        self._remember_failure(lora_name, error)
        raise error()

    async def _load_leased(self, found: LoRARequest) -> LoRARequest:
        """Load a resolver's answer, then end the download cache's lease on its folder
        (loaded or not): until then eviction keeps the folder the load reads."""
        try:
            return await self._load(found)
        finally:
            release_lease(found.lora_path)

    async def _ask(
        self, resolver_name: str, resolver: LoRAResolver, lora_name: str, outcome: _Outcome
    ) -> LoRARequest | None:
        """One resolver's answer, normalised; None (and a noted reason) if it has none."""
        try:
            found = await resolver.resolve_lora(self.base_model_name, lora_name)
        except LoRAAdapterError as exc:  # found remotely, but the copy was refused
            logger.warning("Resolver '%s' refused %r: %s", resolver_name, lora_name, exc.reason)
            outcome.refused.append(f"resolver '{resolver_name}': {exc.reason}")
            return None
        except AdapterDownloadError as exc:  # our own message: says where, never a secret
            logger.warning("Resolver '%s': %s", resolver_name, exc)
            outcome.unreachable.append(exc)
            return None
        except Exception:
            logger.exception(
                "LoRA resolver '%s' raised while resolving %r; trying the next one",
                resolver_name,
                lora_name,
            )
            outcome.notes.append(f"resolver '{resolver_name}' failed (see the server log)")
            return None
        if found is None:
            return None
        if not isinstance(found, LoRARequest):
            logger.error(
                "LoRA resolver '%s' returned %r, not a LoRARequest; ignored", resolver_name, found
            )
            outcome.notes.append(f"resolver '{resolver_name}' returned an invalid answer")
            return None
        if found.lora_name != lora_name:
            logger.warning(
                "LoRA resolver '%s' answered %r for %r; serving it as %r",
                resolver_name,
                found.lora_name,
                lora_name,
                lora_name,
            )
        return dataclasses.replace(
            found,
            lora_name=lora_name,
            base_model_name=found.base_model_name or self.base_model_name,
        )

    def _recent_failure(self, lora_name: str) -> ErrorFactory | None:
        entry = self._missing.get(lora_name)
        if entry is None:
            return None
        expiry, error = entry
        if self._clock() < expiry:
            return error
        del self._missing[lora_name]
        return None

    def _remember_failure(self, lora_name: str, error: ErrorFactory) -> None:
        if self._negative_ttl_s <= 0:
            return
        now = self._clock()
        self._missing[lora_name] = (now + self._negative_ttl_s, error)
        self._missing.move_to_end(lora_name)
        # entries share one TTL, so the oldest expire first
        while self._missing:
            oldest_expiry, _ = next(iter(self._missing.values()))
            if oldest_expiry > now and len(self._missing) <= self._max_negative_entries:
                break
            self._missing.popitem(last=False)


ErrorFactory = Callable[[], LoRAServeError]


@dataclass
class _Outcome:
    """What the resolvers said about one name when none of them produced a loaded adapter."""

    refused: list[str] = field(default_factory=list)  # found, but the adapter was refused
    unreachable: list[AdapterDownloadError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # resolvers that failed or misbehaved

    def error_factory(self, lora_name: str) -> ErrorFactory:
        """Found but refused is the client's 400 (as vLLM); a download that failed, 503; else 404."""
        if self.refused:
            why = "; ".join(self.refused + [str(e) for e in self.unreachable] + self.notes)
            return lambda: LoRAAdapterError(lora_name, f"was found but could not be loaded: {why}")
        if self.unreachable:
            first = self.unreachable[0]
            return lambda: AdapterDownloadError(first.lora_name, first.location, first.reason)
        why = "; ".join(self.notes)
        return lambda: LoRANotFoundError(lora_name, why)
