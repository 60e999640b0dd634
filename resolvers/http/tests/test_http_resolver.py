"""lora_http_resolver against an aiohttp server on 127.0.0.1 that counts requests and can
stall, drop, fail with 5xx, demand a token, or serve hostile archives: the remote resolver
contract, then what only the HTTP resolver does."""

from __future__ import annotations

import asyncio
import tarfile
import zipfile
from pathlib import Path

import pytest
from loraserve_http_resolver import CHUNK, HttpResolver, HttpSource, register_lora_resolvers

from loraserve.errors import AdapterDownloadError, LoRAAdapterError, PluginError
from loraserve.resolution.download import ADAPTER_WEIGHTS
from loraserve.testing.adapters import lora_adapter_files, tar_bytes, tar_member, zip_bytes
from loraserve.testing.probes import record_written_sizes
from loraserve.testing.resolver_contract import (
    BASE,
    RemoteBackend,
    RemoteResolverContract,
    assert_nothing_kept,
    download_cache,
    timed,
)
from loraserve.testing.servers import Faults, RequestLog, serve_bytes, start_app

WEIGHTS = ADAPTER_WEIGHTS
TEMPLATE = "/a/{base_model_name}/{lora_name}"


class FileServer(RemoteBackend):
    """In-memory files by URL path, with request counts, faults and an optional token; an
    adapter ``foo`` is the directory ``/a/tiny-base/foo/``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.log = RequestLog()
        self.faults = Faults()
        self.token: str | None = None
        self.silent = False  # accept connections but never answer (a blackholed origin)
        self.url = ""  # set by serve()
        self._runner = None

    async def handle(self, request):
        from aiohttp import web

        self.log.counts[(request.method, request.path)] += 1
        if self.silent:
            await asyncio.sleep(3600)
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401)
        data = self.files.get(request.path)
        if data is None:
            return web.Response(status=404)
        return await serve_bytes(request, data, self.faults)

    async def serve(self) -> str:
        from aiohttp import web

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner, self.url = await start_app(app)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def publish(self, stem: str, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            self.files[f"/a/{BASE}/{stem}/{name}"] = data

    def resolver(self, cache, path: str = TEMPLATE, token: str | None = None) -> HttpResolver:
        return HttpResolver(self.url + path, token=token, cache=cache)

    def plugin_env(self) -> dict[str, str]:
        return {"VLLM_LORA_RESOLVER_HTTP_URL": self.url + TEMPLATE}


@pytest.fixture
async def server():
    files = FileServer()
    await files.serve()
    yield files
    await files.stop()


@pytest.fixture
def backend(server) -> FileServer:
    return server


class TestHttpResolverContract(RemoteResolverContract):
    plugin, plugin_module = "lora_http_resolver", "loraserve_http_resolver"
    client_module = "aiohttp"
    fault_errors = {
        "drop": "Payload|Disconnected|closed",
        "stall": "no data for 1s|Timeout on reading",
        "status": "HTTP 500",
    }
    refused_error = "Cannot connect"


def archive(files: dict[str, bytes], kind: str) -> bytes:
    if kind == "zip":
        members = [(f"adapter/{name}", data) for name, data in files.items()]
        return zip_bytes(members, compression=zipfile.ZIP_STORED)
    return tar_bytes(files.items(), mode="w:gz" if kind == "tar.gz" else "w")


@pytest.mark.parametrize("kind", ["tar.gz", "tgz", "zip", "tar"])
async def test_archive_resolves(tmp_path, server, kind):
    files = lora_adapter_files(BASE)
    server.files[f"/x/sql.{kind}"] = archive(files, "tar.gz" if kind == "tgz" else kind)
    resolver = server.resolver(download_cache(tmp_path), "/x/{lora_name}." + kind)
    found = await resolver.resolve_lora(BASE, "sql")
    assert {p.name: p.read_bytes() for p in Path(found.lora_path).iterdir()} == files


async def test_a_plain_static_file_server_is_enough(tmp_path):
    """Python's http.server serving a folder (no ETag, no HEAD tricks) resolves too."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    files = lora_adapter_files(BASE)
    folder = tmp_path / "www" / BASE / "sql"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "www"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{{base_model_name}}/{{lora_name}}"
        found = await HttpResolver(url, cache=download_cache(tmp_path)).resolve_lora(BASE, "sql")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert {name: (Path(found.lora_path) / name).read_bytes() for name in files} == files


DEADLINE = 2.0
SLACK = 4.0  # seconds on top of the deadline for local work on a busy machine


async def test_a_silent_origin_serves_the_cached_copy_at_the_deadline(tmp_path, server):
    """Listing retries and the 30 s connect/read timeout all end at the listing deadline."""
    server.publish("sql", lora_adapter_files(BASE))
    resolver = server.resolver(download_cache(tmp_path, retries=3, list_deadline_s=DEADLINE))
    cached = await resolver.resolve_lora(BASE, "sql")
    server.silent = True
    again, served_in = await timed(resolver.resolve_lora(BASE, "sql"))
    assert again.lora_path == cached.lora_path
    failed, failed_in = await timed(resolver.resolve_lora(BASE, "never-cached"))
    assert isinstance(failed, AdapterDownloadError)
    assert "VLLM_LORA_RESOLVER_LIST_DEADLINE" in str(failed)
    assert served_in < DEADLINE + SLACK and failed_in < DEADLINE + SLACK


async def test_retries_with_backoff_recover(tmp_path, server):
    server.publish("sql", lora_adapter_files(BASE))
    resolver = server.resolver(download_cache(tmp_path, retries=3))
    server.faults = Faults(mode="status", status=503, times=2, only=WEIGHTS)
    assert await resolver.resolve_lora(BASE, "sql") is not None
    assert server.log.gets(WEIGHTS) == 3


async def test_bearer_token(tmp_path, server):
    server.publish("sql", lora_adapter_files(BASE))
    server.token = "s3cret"
    anonymous = server.resolver(download_cache(tmp_path / "a"))
    with pytest.raises(AdapterDownloadError, match="401"):
        await anonymous.resolve_lora(BASE, "sql")
    authorised = server.resolver(download_cache(tmp_path / "b"), token="s3cret")
    assert await authorised.resolve_lora(BASE, "sql") is not None


@pytest.fixture
def written(monkeypatch) -> dict[str, int]:
    """The most bytes any fetch of each file left on disk, however it ended."""
    return record_written_sizes(monkeypatch, HttpSource)


async def test_a_body_longer_than_announced_is_cut_off(tmp_path, server, written):
    """HEAD announces the real size; the GET goes on for 32 MiB more (chunked)."""
    files = lora_adapter_files(BASE)
    server.publish("sql", files)
    server.faults = Faults(mode="inflate", after=32 * 1024 * 1024, only=WEIGHTS)
    cache = download_cache(tmp_path, retries=1)
    with pytest.raises(AdapterDownloadError, match="more than the .* bytes it listed"):
        await server.resolver(cache).resolve_lora(BASE, "sql")
    assert server.log.gets(WEIGHTS) == 2  # retried once; each try stopped at the size
    assert written[WEIGHTS] <= len(files[WEIGHTS]) + CHUNK
    assert_nothing_kept(cache)


@pytest.mark.parametrize(
    "evil",
    [
        tar_member("../../escaped"),
        tar_member("/tmp/escaped"),
        tar_member("link", tarfile.SYMTYPE, "/etc/passwd"),
        tar_member("hard", tarfile.LNKTYPE, "/etc/passwd"),
        tar_member("dev", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "device"],
)
async def test_hostile_archives_refused(tmp_path, server, evil):
    server.files["/x/sql.tar.gz"] = tar_bytes([*lora_adapter_files(BASE).items(), (evil, b"pwned")])
    cache = download_cache(tmp_path)
    with pytest.raises(LoRAAdapterError, match="archive member"):
        await server.resolver(cache, "/x/{lora_name}.tar.gz").resolve_lora(BASE, "sql")
    assert_nothing_kept(cache)
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped").exists()


async def test_zip_bomb_refused(tmp_path, server):
    server.files["/x/sql.zip"] = zip_bytes([(WEIGHTS, b"\0" * 20_000_000)])
    cache = download_cache(tmp_path, max_adapter_bytes=1_000_000)
    with pytest.raises(LoRAAdapterError, match="limit"):
        await server.resolver(cache, "/x/{lora_name}.zip").resolve_lora(BASE, "sql")
    assert_nothing_kept(cache)


def test_hook_and_template_checks(monkeypatch):
    registered = {}
    monkeypatch.delenv("VLLM_LORA_RESOLVER_HTTP_URL", raising=False)
    register_lora_resolvers(registered.__setitem__)
    assert registered == {}
    monkeypatch.setenv("VLLM_LORA_RESOLVER_HTTP_URL", "https://h/{lora_name}.zip")
    monkeypatch.setenv("VLLM_LORA_RESOLVER_HTTP_TOKEN", "t")
    register_lora_resolvers(registered.__setitem__)
    assert registered["lora_http_resolver"].token == "t"
    for bad in ("ftp://h/{lora_name}", "https://h/fixed"):
        with pytest.raises(PluginError):
            HttpResolver(bad)
