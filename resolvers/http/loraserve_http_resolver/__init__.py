"""Plugin ``lora_http_resolver``: adapter ``foo`` is at ``$VLLM_LORA_RESOLVER_HTTP_URL`` with
``{base_model_name}`` and ``{lora_name}`` filled in (each path segment URL-quoted).

The URL is a directory holding ``adapter_config.json`` and ``adapter_model.safetensors``
(fetched by name), or one ``.tar``/``.tar.gz``/``.tgz``/``.zip`` archive. A 404 means "not
here"; 5xx, 429 and dropped connections are retried with backoff by the shared cache; a
refused connection is not (the cache serves its copy at once).
``VLLM_LORA_RESOLVER_HTTP_TOKEN`` is sent as a bearer token (aiohttp drops it on redirects
to another host). aiohttp's client is imported only when the first adapter is looked up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
from pathlib import Path
from urllib.parse import quote, urlsplit

from loraserve.errors import LoRAServeError, PluginError
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver
from loraserve.plugins import hookimpl
from loraserve.resolution.download import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    DownloadCache,
    ProgressCallback,
    RemoteFile,
    RemoteListing,
    SourceUnreachableError,
    TransientSourceError,
    fill_location_template,
    get_download_cache,
    is_archive_name,
)

logger = logging.getLogger(__name__)

URL_ENV = "VLLM_LORA_RESOLVER_HTTP_URL"
TOKEN_ENV = "VLLM_LORA_RESOLVER_HTTP_TOKEN"
RESOLVER_NAME = "lora_http_resolver"
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
        except LoRAServeError:
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
    if status < 400:
        return
    if status >= 500 or status in (408, 429) or (missing_is_error and status in (404, 410)):
        raise TransientSourceError(f"HTTP {status} from {url}")
    if status in (401, 403):
        raise PermissionError(f"HTTP {status} from {url}; check {TOKEN_ENV}")
    raise RuntimeError(f"HTTP {status} from {url}")


def _as_transient(exc: Exception) -> Exception:
    """aiohttp's payload and timeout errors are worth a retry; no connection at all is
    ``SourceUnreachableError`` (refused, unknown host, connect timeout)."""
    import aiohttp

    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        return SourceUnreachableError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)):
        return TransientSourceError(f"{type(exc).__name__}: {exc}")
    return exc


class HttpResolver(LoRAResolver):
    """Resolves adapter names to URLs through the shared download cache."""

    def __init__(
        self, url_template: str, token: str | None = None, cache: DownloadCache | None = None
    ) -> None:
        scheme = urlsplit(url_template).scheme
        if scheme not in ("http", "https") or "{lora_name}" not in url_template:
            raise PluginError(
                f"{URL_ENV}={url_template!r} must be an http(s) URL containing {{lora_name}}, "
                "e.g. https://example.com/adapters/{base_model_name}/{lora_name}.tar.gz"
            )
        self.url_template = url_template
        self.token = token
        self._cache = cache

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        url = fill_location_template(
            self.url_template,
            base_model_name=base_model_name,
            lora_name=lora_name,
            quote=lambda segment: quote(segment, safe=""),
        )
        if url is None:
            logger.info("%s: refused adapter name %r", RESOLVER_NAME, lora_name)
            return None
        cache = self._cache or get_download_cache()
        source = HttpSource(url, self.token, cache.config.timeout_s)
        try:
            path = await cache.get(source, lora_name=lora_name, base_model_name=base_model_name)
        finally:
            await source.aclose()
        return None if path is None else LoRARequest(lora_name, 1, str(path), base_model_name)


@hookimpl
def register_lora_resolvers(register) -> None:
    """Register the resolver when ``VLLM_LORA_RESOLVER_HTTP_URL`` is set."""
    template = os.environ.get(URL_ENV)
    if not template:
        logger.warning("%s is not set, so %s resolves nothing.", URL_ENV, RESOLVER_NAME)
        return
    token = os.environ.get(TOKEN_ENV) or None
    host = urlsplit(template).hostname or ""
    if token and template.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("%s is sent in clear text to %s; use https", TOKEN_ENV, host)
    register(RESOLVER_NAME, HttpResolver(template, token))
