"""Where an adapter lives on the Hub, for the shared download cache: one API call lists the
files of ``main``; ``snapshot_download`` of that commit fetches them into huggingface_hub's
own cache (a mirrored source: the cache validates the folder it hands back).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from loraserve.resolution import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ProgressCallback,
    RemoteFile,
    RemoteListing,
    status_error,
    transient_or_final,
)
from loraserve_hf_hub_resolver.progress import byte_meter

REVISION = "main"


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
                tqdm_class=byte_meter(progress),
            )
        except Exception as exc:
            mapped = _classify(exc)
            if mapped is exc:  # final, or the cache's own size check
                raise
            raise mapped from exc


def _hub_cache_dir() -> str | None:
    """Read at call time (huggingface_hub reads it once at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _classify(exc: Exception) -> BaseException:
    """The Hub's HTTP statuses as every resolver counts them; httpx's connect errors are
    unreachable (huggingface_hub 1.x uses httpx, 2.x httpx2: the module name tells)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status is not None:
        return status_error(status, f"the Hub ({exc})", denied_hint="check HF_TOKEN")
    httpx = (type(exc),) if type(exc).__module__.startswith("httpx") else ()
    connect = type(exc).__name__ in ("ConnectError", "ConnectTimeout")
    return transient_or_final(
        exc,
        unreachable=httpx if connect else (),
        transient=(HfHubHTTPError, LocalEntryNotFoundError, OSError, *httpx),
    )
