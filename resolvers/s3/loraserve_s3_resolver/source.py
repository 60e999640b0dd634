"""Where an adapter lives in S3, for the shared download cache: list a prefix (or one archive
object), fetch one object.

The client makes one attempt per call (botocore's and s3fs's own retries are off): the
shared cache retries, within its listing deadline, and a refused connection serves the
cached copy at once.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import threading
from pathlib import Path

from loraserve.resolution import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    LoRAServeError,
    ProgressCallback,
    RemoteFile,
    RemoteListing,
    TransientSourceError,
    is_archive_name,
    transient_or_final,
)

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


def _as_transient(exc: Exception) -> BaseException:
    """Any trouble but a refusal is retried (s3fs maps S3's answers to OSError types); no
    connection at all (refused, unknown host, connect timeout) is unreachable."""
    from botocore.exceptions import ConnectionError as NoConnection

    return transient_or_final(
        exc,
        unreachable=(NoConnection,),
        transient=(Exception,),
        denied_hint="check the AWS credentials and bucket policy",
    )
