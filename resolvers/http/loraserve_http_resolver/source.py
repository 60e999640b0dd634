"""Where an adapter lives over HTTP, for the shared download cache: a directory of files
(fetched by name) or one archive.

A 404 means "not here"; 5xx, 429 and dropped connections are retried with backoff by the
shared cache; a refused connection is not (the cache serves its copy at once).
"""

from __future__ import annotations

import asyncio
import posixpath
from pathlib import Path
from urllib.parse import urlsplit

from loraserve.resolution import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoRAServeError,
    ProgressCallback,
    RemoteFile,
    RemoteListing,
    TransientSourceError,
    is_archive_name,
    status_error,
    transient_or_final,
)

TOKEN_ENV = "VLLM_LORA_RESOLVER_HTTP_TOKEN"
CHUNK = 1024 * 1024


class HttpSource:
    """One adapter at a URL (a directory of files or one archive), for the download cache."""

    def __init__(self, url: str, token: str | None, timeout_s: float) -> None:
        self.location = url
        self.archive = is_archive_name(urlsplit(url).path)
        self.token = token
        self.timeout_s = timeout_s
        self._session = None

    def _client(self):
        if self._session is None:
            import aiohttp

            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=self.timeout_s,
                sock_connect=self.timeout_s,
                sock_read=self.timeout_s,
            )
            headers = {"Accept-Encoding": "identity"}  # sizes must match what HEAD says
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            self._session = aiohttp.ClientSession(timeout=timeout, headers=headers)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def list_files(self) -> RemoteListing | None:
        if self.archive:
            name = posixpath.basename(urlsplit(self.location).path)
            archive = await self._head(self.location, name)
            return None if archive is None else RemoteListing((archive,), archive=True)
        base = self.location.rstrip("/")
        config, weights = await asyncio.gather(
            self._head(f"{base}/{ADAPTER_CONFIG}", ADAPTER_CONFIG),
            self._head(f"{base}/{ADAPTER_WEIGHTS}", ADAPTER_WEIGHTS),
        )
        if config is None:
            return None
        return RemoteListing(tuple(f for f in (config, weights) if f is not None))

    async def _head(self, url: str, name: str) -> RemoteFile | None:
        """Size and version tag of one URL; ``None`` on 404/410."""
        try:
            async with self._client().head(url, allow_redirects=True) as response:
                if response.status in (404, 410):
                    return None
                _raise_for_status(response.status, url)
                tag = response.headers.get("ETag") or response.headers.get("Last-Modified")
                return RemoteFile(name, response.content_length, tag, url)
        except (LoRAServeError, PermissionError, TransientSourceError, RuntimeError):
            raise
        except Exception as exc:
            raise _as_transient(exc) from exc

    async def fetch(self, file: RemoteFile, dest: Path, progress: ProgressCallback) -> None:
        try:
            async with self._client().get(file.remote_path) as response:
                _raise_for_status(response.status, file.remote_path, missing_is_error=True)
                with dest.open("wb") as out:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        progress(len(chunk))  # raises past the listed size: nothing written
                        out.write(chunk)
        except (LoRAServeError, PermissionError, TransientSourceError):
            raise
        except Exception as exc:
            raise _as_transient(exc) from exc


def _raise_for_status(status: int, url: str, missing_is_error: bool = False) -> None:
    """A file that was listed and is now missing is worth a retry, like a 5xx."""
    if status < 400:
        return
    if missing_is_error and status in (404, 410):
        raise TransientSourceError(f"HTTP {status} from {url}")
    raise status_error(status, url, denied_hint=f"check {TOKEN_ENV}")


def _as_transient(exc: Exception) -> BaseException:
    """aiohttp's payload and timeout errors are retried; no connection at all (refused,
    unknown host, connect timeout) is unreachable."""
    import aiohttp

    return transient_or_final(
        exc,
        unreachable=(aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError),
        transient=(aiohttp.ClientError,),
    )
