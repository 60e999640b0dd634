"""The base of resolvers that fetch adapters from elsewhere (S3, HTTP, the Hub).

A remote resolver only says where an adapter named ``lora_name`` lives (a source); the
shared download cache lists, fetches, validates, keeps and evicts it. How a backend's
errors count (retried, unreachable, final) is decided here once, by ``transient_or_final``
and ``status_error``, so every backend retries the same failures.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod

from loraserve.errors import LoRAServeError
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver
from loraserve.resolution.download import (
    DownloadCache,
    MirroredAdapterSource,
    RemoteAdapterSource,
    SourceUnreachableError,
    TransientSourceError,
    get_download_cache,
)

AdapterSource = RemoteAdapterSource | MirroredAdapterSource


class RemoteResolver(LoRAResolver):
    """A resolver that names a source per adapter and lets the download cache do the rest."""

    def __init__(self, cache: DownloadCache | None = None) -> None:
        self.cache = cache if cache is not None else get_download_cache()  # the shared one

    @abstractmethod
    async def source_for(self, base_model_name: str, lora_name: str) -> AdapterSource | None:
        """Where ``lora_name`` lives, or None when this resolver cannot have it (say, the
        name fails ``names.is_safe_name``). Runs before the listing's deadline starts, so
        one-off local set-up (a client) belongs here."""

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        source = await self.source_for(base_model_name, lora_name)
        if source is None:
            return None
        try:
            path = await self.cache.get(
                source, lora_name=lora_name, base_model_name=base_model_name
            )
        finally:
            if (aclose := getattr(source, "aclose", None)) is not None:
                await aclose()  # a source may hold a client session for its transfers
        return None if path is None else LoRARequest(lora_name, 1, str(path), base_model_name)


def transient_or_final(
    exc: BaseException,
    *,
    unreachable: tuple[type[BaseException], ...] = (),
    transient: tuple[type[BaseException], ...] = (),
    denied_hint: str = "",
) -> BaseException:
    """The error the download cache should see for a backend's ``exc``.

    Already classified (loraserve's own, a source error) stays as it is; a refusal of
    access is final and says what to check (``denied_hint``); ``unreachable`` types (no
    connection at all) are ``SourceUnreachableError``, answered at once from the cached
    copy; ``transient`` types and timeouts or dropped connections are retried; anything
    else is final.
    """
    if isinstance(exc, (LoRAServeError, TransientSourceError)):
        return exc
    if isinstance(exc, PermissionError):
        return PermissionError(f"access denied ({exc}); {denied_hint}") if denied_hint else exc
    described = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, unreachable):
        return SourceUnreachableError(described)
    if isinstance(exc, (*transient, TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return TransientSourceError(described)
    return exc


def status_error(status: int, where: str, denied_hint: str = "") -> Exception:
    """An HTTP error status as the cache treats it: 408, 429 and 5xx are retried; 401 and
    403 are final and say what to check; any other 4xx is final."""
    if status >= 500 or status in (408, 429):
        return TransientSourceError(f"HTTP {status} from {where}")
    if status in (401, 403):
        return PermissionError(f"HTTP {status} from {where}" + (f"; {denied_hint}" if denied_hint else ""))
    return RuntimeError(f"HTTP {status} from {where}")
