"""Plugin ``lora_s3_resolver``: adapter ``foo`` is the prefix ``$VLLM_LORA_RESOLVER_S3_URI``
with ``{base_model_name}`` and ``{lora_name}`` filled in.

The prefix holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or the template
ends in ``.tar``/``.tar.gz``/``.tgz``/``.zip`` and names one archive). Credentials, region and
endpoint come from the usual AWS variables and profiles (``AWS_ENDPOINT_URL`` for MinIO and
friends). s3fs is imported only when the first adapter is looked up.

The client makes one attempt per call (botocore's and s3fs's own retries are off): the
shared cache retries, within its listing deadline, and a refused connection serves the
cached copy at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import threading
from pathlib import Path

from loraserve.errors import AdapterDownloadError, LoRAServeError, PluginError
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
    fill_location_template,
    get_download_cache,
    is_archive_name,
)

logger = logging.getLogger(__name__)

URI_ENV = "VLLM_LORA_RESOLVER_S3_URI"
RESOLVER_NAME = "lora_s3_resolver"
CHUNK = 1024 * 1024


_filesystems: dict[tuple, object] = {}
_filesystems_lock = threading.Lock()


def s3_filesystem(timeout_s: float):
    """The process's s3fs filesystem for these settings, living on fsspec's I/O thread.

    Making a botocore client is 50-150 ms of CPU (service models, the client class); made on
    the server's event loop for every resolution, it stalled all streaming requests that
    long. Made once on fsspec's own loop and kept (s3fs's own instance cache does the same:
    collecting one while another loop runs makes s3fs close it on the wrong loop), the
    server's loop only awaits futures. Blocking: s3fs is imported and the botocore client
    made on first use, so no timed call ever includes that work.
    """
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    key = (timeout_s, endpoint, env.get("AWS_PROFILE"), env.get("AWS_ACCESS_KEY_ID"))
    with _filesystems_lock:
        if key not in _filesystems:
            import s3fs

            fs = s3fs.S3FileSystem(
                skip_instance_cache=True,
                use_listings_cache=False,
                client_kwargs={"endpoint_url": endpoint} if endpoint else {},
                config_kwargs={
                    "connect_timeout": timeout_s,
                    "read_timeout": timeout_s,
                    "retries": {"max_attempts": 1, "mode": "standard"},
                },
            )
            fs.retries = 1  # one attempt per call: the cache's retries are the only ones
            fs.connect()  # the botocore client, built on fsspec's loop
            _filesystems[key] = fs
        return _filesystems[key]


class S3Source:
    """One adapter under an S3 prefix (or one archive object), for the download cache."""

    def __init__(self, uri: str, timeout_s: float) -> None:
        self.location = uri
        self.path = uri.removeprefix("s3://").rstrip("/")  # bucket/key
        self.timeout_s = timeout_s

    async def _run(self, call):
        """Await ``call(fs)``, a coroutine of the filesystem, on fsspec's I/O loop.

        Cancelling the caller (the cache's stall watchdog) cancels the transfer there too.
        """
        fs = await asyncio.to_thread(s3_filesystem, self.timeout_s)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(fs), fs.loop))

    async def list_files(self) -> RemoteListing | None:
        try:
            if is_archive_name(self.path):
                info = await self._run(lambda fs: fs._info(self.path, refresh=True))
                if info.get("type") != "file":
                    return None
                return RemoteListing(
                    (_remote_file(posixpath.basename(self.path), info),), archive=True
                )
            entries = await self._run(lambda fs: fs._ls(self.path, detail=True, refresh=True))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise _as_transient(exc) from exc
        files = {posixpath.basename(e["name"]): e for e in entries if e.get("type") == "file"}
        if ADAPTER_CONFIG not in files:
            return None
        return RemoteListing(tuple(_remote_file(n, files[n]) for n in ADAPTER_FILES if n in files))

    async def fetch(self, file: RemoteFile, dest: Path, progress: ProgressCallback) -> None:
        bucket, _, key = file.remote_path.partition("/")

        async def download(fs) -> None:
            response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                with dest.open("wb") as out:
                    while chunk := await body.read(CHUNK):
                        progress(len(chunk))  # raises past the listed size: nothing written
                        out.write(chunk)
            finally:
                body.close()

        try:
            await self._run(download)
        except (LoRAServeError, TransientSourceError):  # the cache's own size checks
            raise
        except FileNotFoundError as exc:
            raise TransientSourceError(f"{file.remote_path} disappeared during download") from exc
        except Exception as exc:
            raise _as_transient(exc) from exc


def _remote_file(name: str, info: dict) -> RemoteFile:
    tag = info.get("ETag") or info.get("LastModified")
    return RemoteFile(
        name=name,
        size=info.get("size"),
        tag=str(tag).strip('"') if tag else None,
        remote_path=info["name"],
    )


def _as_transient(exc: Exception) -> Exception:
    """Network and server trouble is retried; no connection at all (refused, unknown host,
    connect timeout) is ``SourceUnreachableError``; access denied is final and says what to
    check."""
    from botocore.exceptions import ConnectionError as NoConnection

    if isinstance(exc, PermissionError):
        return PermissionError(
            f"access denied ({exc}); check the AWS credentials and bucket policy"
        )
    if isinstance(exc, NoConnection):
        return SourceUnreachableError(f"S3: {type(exc).__name__}: {exc}")
    return TransientSourceError(f"S3: {type(exc).__name__}: {exc}")


class S3Resolver(LoRAResolver):
    """Resolves adapter names to S3 prefixes through the shared download cache."""

    def __init__(self, uri_template: str, cache: DownloadCache | None = None) -> None:
        if not uri_template.startswith("s3://") or "{lora_name}" not in uri_template:
            raise PluginError(
                f"{URI_ENV}={uri_template!r} must start with s3:// and contain {{lora_name}}, "
                "e.g. s3://bucket/adapters/{base_model_name}/{lora_name}"
            )
        self.uri_template = uri_template
        self._cache = cache

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        uri = fill_location_template(
            self.uri_template, base_model_name=base_model_name, lora_name=lora_name
        )
        if uri is None:
            logger.info("%s: refused adapter name %r", RESOLVER_NAME, lora_name)
            return None
        cache = self._cache or get_download_cache()
        try:  # made before the listing's deadline starts: local work, once per process
            await asyncio.to_thread(s3_filesystem, cache.config.timeout_s)
        except Exception as exc:
            raise AdapterDownloadError(lora_name, uri, f"no S3 client: {exc}") from exc
        source = S3Source(uri, cache.config.timeout_s)
        path = await cache.get(source, lora_name=lora_name, base_model_name=base_model_name)
        return None if path is None else LoRARequest(lora_name, 1, str(path), base_model_name)


@hookimpl
def register_lora_resolvers(register) -> None:
    """Register the resolver when ``VLLM_LORA_RESOLVER_S3_URI`` is set."""
    template = os.environ.get(URI_ENV)
    if not template:
        logger.warning("%s is not set, so %s resolves nothing.", URI_ENV, RESOLVER_NAME)
        return
    register(RESOLVER_NAME, S3Resolver(template))
