"""A real S3 endpoint for the S3 resolver's tests: ``moto_server`` on 127.0.0.1, reached
through ``S3Proxy``, which counts requests and injects faults (so "one download" and "killed
mid-download" are observable). benchmarks/cold_start.py loads this file for the same fakes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loraserve.testing.servers import Faults, RequestLog, start_app, write_with_fault

BUCKET = "adapters"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def moto_server() -> Iterator[str]:
    """A real S3 endpoint: ``moto_server`` on a free 127.0.0.1 port; yields its URL."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if exe is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]'")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def boto3_client(url: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )


class S3Proxy:
    """Forwards every request to an S3 endpoint, counting them in ``log`` and applying
    ``faults`` to successful GETs (stall or drop a third of the way in, or a slow link)."""

    def __init__(self, upstream: str, faults: Faults | None = None) -> None:
        self.upstream = upstream
        self.log = RequestLog()
        self.faults = faults or Faults()
        self.url = ""  # set by serve()
        self._session = None
        self._runner = None

    def app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def serve(self) -> str:
        """Serve on the running loop; returns the URL to use as the S3 endpoint."""
        self._runner, self.url = await start_app(self.app())
        return self.url

    async def stop(self) -> None:
        """Stop answering (connections are refused from now on) and close the client."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.close()

    async def handle(self, request):
        import aiohttp
        from aiohttp import web

        self.log.counts[(request.method, request.path)] += 1
        if self._session is None:
            self._session = aiohttp.ClientSession()
        skip = ("host", "content-length", "transfer-encoding")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
            auto_decompress=False,
        ) as upstream:
            body = await upstream.read()
            hop = {"transfer-encoding", "connection", "server", "date"}
            if request.method != "HEAD":  # HEAD keeps the object's length; bodies get their own
                hop.add("content-length")
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in hop}
            status = upstream.status
        mode = self.faults.take(request.path) if request.method == "GET" and status < 300 else None
        if mode is None:
            return web.Response(status=status, body=body, headers=out)
        response = web.StreamResponse(status=status, headers=out)
        return await write_with_fault(request, response, body, self.faults, mode)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """One moto_server for the whole run, with the bucket made; tests use their own prefix."""
    with moto_server() as url:
        boto3_client(url).create_bucket(Bucket=BUCKET)
        yield url


@pytest.fixture(scope="session")
def s3(moto_url):
    """A boto3 client straight to moto (not through the proxy), for putting objects."""
    return boto3_client(moto_url)


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
async def proxy(moto_url, monkeypatch) -> AsyncIterator[S3Proxy]:
    """The counting, fault-injecting proxy in front of moto, set as ``AWS_ENDPOINT_URL``."""
    forward = S3Proxy(moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", await forward.serve())
    yield forward
    await forward.stop()
