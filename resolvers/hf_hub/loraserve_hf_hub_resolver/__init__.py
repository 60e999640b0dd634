"""Plugin ``lora_hf_hub_resolver``: adapter ``owner/repo[/subpath]`` is that folder of that
Hub repository, as in vLLM, if ``VLLM_LORA_RESOLVER_HF_REPO_LIST`` allows the repo.

The allowlist holds repo ids (``owner/repo``) or whole owners (``owner``); unset or empty
allows nothing. Files go to huggingface_hub's own cache (``HF_HUB_CACHE``/``HF_HOME``), so
adapters fetched earlier with Hub tools are reused; only ``adapter_config.json`` and
``adapter_model.safetensors`` are downloaded, and the shared download cache validates them
before they are handed out. ``HF_TOKEN`` and ``HF_ENDPOINT`` work as usual.
huggingface_hub is imported only when the first adapter is looked up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path

from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver
from loraserve.plugins import hookimpl
from loraserve.resolution.download import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    DownloadCache,
    ProgressCallback,
    RemoteFile,
    RemoteListing,
    SourceUnreachableError,
    TransientSourceError,
    get_download_cache,
    is_safe_name,
)

logger = logging.getLogger(__name__)

REPO_LIST_ENV = "VLLM_LORA_RESOLVER_HF_REPO_LIST"
RESOLVER_NAME = "lora_hf_hub_resolver"
REVISION = "main"


class RepoAllowlist:
    """Repo ids and owners that may be loaded; compared case-insensitively, like the Hub."""

    def __init__(self, entries: str | list[str] | None) -> None:
        if isinstance(entries, str):
            entries = entries.split(",")
        cleaned = [e.strip().strip("/").lower() for e in entries or [] if e.strip().strip("/")]
        self.repos = {e for e in cleaned if "/" in e}
        self.owners = {e for e in cleaned if "/" not in e}

    def __bool__(self) -> bool:
        return bool(self.repos or self.owners)

    def allows(self, repo_id: str) -> bool:
        repo_id = repo_id.lower()
        return repo_id in self.repos or repo_id.split("/")[0] in self.owners


def split_adapter_name(lora_name: str) -> tuple[str, str] | None:
    """``owner/repo[/subpath]`` -> (repo id, subpath); ``None`` for anything else."""
    if not is_safe_name(lora_name.rstrip("/")):
        return None
    parts = lora_name.rstrip("/").split("/")
    if len(parts) < 2:
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


class HubSource:
    """An adapter folder of a Hub repo; files live in huggingface_hub's cache (mirrored)."""

    def __init__(self, repo_id: str, subpath: str, timeout_s: float) -> None:
        self.repo_id = repo_id
        self.subpath = subpath
        self.timeout_s = timeout_s
        self.endpoint = os.environ.get("HF_ENDPOINT") or None
        self.token = os.environ.get("HF_TOKEN") or None
        where = (self.endpoint or "https://huggingface.co").rstrip("/")
        self.location = f"{where}/{repo_id}" + (f"/tree/{REVISION}/{subpath}" if subpath else "")

    def _path(self, name: str) -> str:
        return f"{self.subpath}/{name}" if self.subpath else name

    async def list_files(self) -> RemoteListing | None:
        """One API call: the commit of ``main`` and the adapter files' sizes and blob ids."""
        info = await asyncio.to_thread(self._model_info)
        if info is None:
            return None
        siblings = {s.rfilename: s for s in info.siblings or []}
        if self._path(ADAPTER_CONFIG) not in siblings:
            return None
        files = []
        for name in ADAPTER_FILES:
            sibling = siblings.get(self._path(name))
            if sibling is not None:
                tag = sibling.lfs.sha256 if sibling.lfs else sibling.blob_id
                files.append(RemoteFile(name, sibling.size, tag, self._path(name)))
        return RemoteListing(tuple(files), extra={"commit": info.sha})

    def _model_info(self):
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            return api.model_info(
                self.repo_id, revision=REVISION, files_metadata=True, timeout=self.timeout_s
            )
        except GatedRepoError as exc:
            raise PermissionError(
                f"{self.repo_id} is gated; set HF_TOKEN to a token with access"
            ) from exc
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return None
        except Exception as exc:
            raise _classify(exc) from exc

    async def materialize(self, listing: RemoteListing, progress: ProgressCallback) -> Path:
        """``snapshot_download`` of just the adapter files at the listed commit."""
        folder = await asyncio.to_thread(self._snapshot, listing, progress)
        return Path(folder) / self.subpath if self.subpath else Path(folder)

    def _snapshot(self, listing: RemoteListing, progress: ProgressCallback) -> str:
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(
                self.repo_id,
                revision=listing.extra["commit"],  # pinned: files of one commit, no re-listing
                allow_patterns=[f.remote_path for f in listing.files],
                cache_dir=_hub_cache_dir(),
                endpoint=self.endpoint,
                token=self.token,
                etag_timeout=self.timeout_s,
                tqdm_class=_byte_meter(progress),
            )
        except Exception as exc:
            mapped = _classify(exc)
            if mapped is exc:  # final, or the cache's own size check
                raise
            raise mapped from exc


def _byte_meter(progress: ProgressCallback) -> type:
    """A silent tqdm class for ``snapshot_download`` that reports its bytes to ``progress``.

    huggingface_hub updates its byte bars before it writes each chunk, so ``progress``
    raising stops the download with nothing more written. Two bars count the same bytes
    (network and disk): only the furthest one's advance is reported.
    """
    from tqdm.auto import tqdm

    lock = threading.Lock()
    furthest = [0]

    class ByteMeter(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            self.counted, self.counts_bytes = 0, kwargs.get("unit") == "B"
            super().__init__(*args, **{**kwargs, "disable": True})

        def update(self, n: int | float | None = 1) -> bool | None:
            if self.counts_bytes and n:
                with lock:
                    self.counted += int(n)
                    ahead = self.counted - furthest[0]
                    furthest[0] = max(furthest[0], self.counted)
                if ahead > 0:
                    progress(ahead)
            return super().update(n)

    return ByteMeter


def _hub_cache_dir() -> str | None:
    """Read at call time (huggingface_hub reads it once at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _classify(exc: Exception) -> Exception:
    """Connection trouble and 5xx/429 are retried (no connection at all is
    ``SourceUnreachableError``); 401/403 say to check HF_TOKEN."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(exc, TransientSourceError):  # the cache's size check, from the byte meter
        return exc
    if type(exc).__module__.startswith("httpx") and type(exc).__name__ in (
        "ConnectError",
        "ConnectTimeout",
    ):
        return SourceUnreachableError(f"{type(exc).__name__}: {exc}")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return PermissionError(f"Hub answered {status}; check HF_TOKEN ({exc})")
    if isinstance(exc, HfHubHTTPError) and status is not None and status < 500 and status != 429:
        return exc
    if isinstance(exc, (HfHubHTTPError, LocalEntryNotFoundError, OSError, TimeoutError)):
        return TransientSourceError(f"{type(exc).__name__}: {exc}")
    if type(exc).__module__.startswith("httpx"):
        return TransientSourceError(f"{type(exc).__name__}: {exc}")
    return exc


class HfHubResolver(LoRAResolver):
    """Resolves ``owner/repo[/subpath]`` names of allow-listed repos through the cache."""

    def __init__(self, repo_list: str | list[str] | None, cache: DownloadCache | None = None):
        self.allowlist = RepoAllowlist(repo_list)
        self._cache = cache
        if self.allowlist:
            logger.warning(
                "%s may download LoRA adapters from these Hugging Face repos/owners: %s",
                RESOLVER_NAME,
                sorted(self.allowlist.repos | self.allowlist.owners),
            )

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        parsed = split_adapter_name(lora_name)
        if parsed is None or not self.allowlist.allows(parsed[0]):
            return None
        repo_id, subpath = parsed
        cache = self._cache or get_download_cache()
        source = HubSource(repo_id, subpath, cache.config.timeout_s)
        path = await cache.get(source, lora_name=lora_name, base_model_name=base_model_name)
        return None if path is None else LoRARequest(lora_name, 1, str(path), base_model_name)


@hookimpl
def register_lora_resolvers(register) -> None:
    """Register the resolver when the allowlist names at least one repo or owner."""
    allowlist = os.environ.get(REPO_LIST_ENV, "")
    if not RepoAllowlist(allowlist):
        logger.warning("%s is empty, so %s resolves nothing.", REPO_LIST_ENV, RESOLVER_NAME)
        return
    register(RESOLVER_NAME, HfHubResolver(allowlist))
