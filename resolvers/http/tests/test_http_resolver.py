"""lora_http_resolver against an aiohttp server on 127.0.0.1 that counts requests and can
stall, drop, fail with 5xx, demand a token, or serve hostile archives."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from loraserve_http_resolver import CHUNK, HttpResolver, HttpSource, register_lora_resolvers

from loraserve.errors import AdapterDownloadError, LoRAAdapterError, PluginError
from loraserve.resolution.download import DownloadCache, DownloadCacheConfig
from loraserve.resolution.download.testing import (
    Faults,
    RequestLog,
    lora_adapter_files,
    record_written_sizes,
    serve_bytes,
    start_app,
    tar_bytes,
    tar_member,
    zip_bytes,
)

BASE = "tiny-base"
WEIGHTS = "adapter_model.safetensors"


class FileServer:
    """In-memory files by URL path, with request counts, faults and an optional token."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.log = RequestLog()
        self.faults = Faults()
        self.token: str | None = None
        self.silent = False  # accept connections but never answer (a blackholed origin)

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


@pytest.fixture
async def server():
    from aiohttp import web

    files = FileServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", files.handle)
    runner, files.url = await start_app(app)
    yield files
    await runner.cleanup()


def publish(server: FileServer, prefix: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        server.files[f"{prefix}/{name}"] = data


def make_resolver(tmp_path: Path, server: FileServer, path: str, token=None, **config):
    settings = dict(download_dir=tmp_path / "cache", retries=0, timeout_s=30.0) | config
    settings.setdefault("list_deadline_s", 60.0)
    cache = DownloadCache(DownloadCacheConfig(**settings))
    return HttpResolver(server.url + path, token=token, cache=cache)


def assert_clean(resolver: HttpResolver) -> None:
    store = resolver._cache.store
    assert list(store.tmp.iterdir()) == [] and store.lru_entries() == []


def archive(files: dict[str, bytes], kind: str) -> bytes:
    if kind == "zip":
        members = [(f"adapter/{name}", data) for name, data in files.items()]
        return zip_bytes(members, compression=zipfile.ZIP_STORED)
    return tar_bytes(files.items(), mode="w:gz" if kind == "tar.gz" else "w")


async def test_directory_resolves_and_revalidates(tmp_path, server):
    files = lora_adapter_files(BASE, seed=1)
    publish(server, f"/a/{BASE}/sql", files)
    resolver = make_resolver(tmp_path, server, "/a/{base_model_name}/{lora_name}")
    found = await resolver.resolve_lora(BASE, "sql")
    assert (Path(found.lora_path) / WEIGHTS).read_bytes() == files[WEIGHTS]
    await resolver.resolve_lora(BASE, "sql")
    assert server.log.gets(WEIGHTS) == 1  # unchanged ETag: not fetched again
    changed = lora_adapter_files(BASE, seed=2)
    publish(server, f"/a/{BASE}/sql", changed)
    fresh = await resolver.resolve_lora(BASE, "sql")
    assert (Path(fresh.lora_path) / WEIGHTS).read_bytes() == changed[WEIGHTS]
    assert server.log.gets(WEIGHTS) == 2


@pytest.mark.parametrize("kind", ["tar.gz", "tgz", "zip", "tar"])
async def test_archive_resolves(tmp_path, server, kind):
    files = lora_adapter_files(BASE)
    server.files[f"/x/sql.{kind}"] = archive(files, "tar.gz" if kind == "tgz" else kind)
    resolver = make_resolver(tmp_path, server, "/x/{lora_name}." + kind)
    found = await resolver.resolve_lora(BASE, "sql")
    assert {p.name: p.read_bytes() for p in Path(found.lora_path).iterdir()} == files


async def test_unknown_is_none_and_names_cannot_escape(tmp_path, server):
    server.files["/secret/adapter_config.json"] = b"{}"
    resolver = make_resolver(tmp_path, server, "/a/{lora_name}")
    assert await resolver.resolve_lora(BASE, "nope") is None
    for name in ("../secret", "..", "a/../../secret", "x?y", "%2e%2e"):
        assert await resolver.resolve_lora(BASE, name) is None
    assert all("secret" not in p for _, p in server.log.counts)


async def test_32_concurrent_requests_download_once(tmp_path, server):
    publish(server, "/a/sql", lora_adapter_files(BASE))
    resolver = make_resolver(tmp_path, server, "/a/{lora_name}")
    found = await asyncio.gather(*(resolver.resolve_lora(BASE, "sql") for _ in range(32)))
    assert len({f.lora_path for f in found}) == 1
    assert server.log.gets(WEIGHTS) == 1 and server.log.gets("adapter_config.json") == 1


@pytest.mark.parametrize("mode", ["drop", "stall", "status"])
async def test_server_dying_or_stalling_mid_download(tmp_path, server, mode):
    publish(server, "/a/sql", lora_adapter_files(BASE))
    resolver = make_resolver(tmp_path, server, "/a/{lora_name}", timeout_s=1.0)
    server.faults = Faults(mode=mode, after=1000, only=WEIGHTS)
    why = {
        "drop": "Payload|Disconnected|closed",
        "stall": "no data for 1s|Timeout on reading",
        "status": "HTTP 500",
    }
    with pytest.raises(AdapterDownloadError, match=why[mode]):
        await asyncio.wait_for(resolver.resolve_lora(BASE, "sql"), 60)  # a hang guard
    assert_clean(resolver)
    server.faults = Faults()
    patient = make_resolver(tmp_path, server, "/a/{lora_name}")  # same cache, no 1 s limit
    assert (Path((await patient.resolve_lora(BASE, "sql")).lora_path) / WEIGHTS).is_file()


DEADLINE = 2.0
SLACK = 4.0  # seconds on top of the deadline for local work on a busy machine


async def timed(call) -> tuple[object, float]:
    """(result or raised exception, seconds); the limit only guards against a hang."""
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(call, 60)
    except Exception as exc:
        result = exc
    return result, time.monotonic() - started


async def test_a_silent_origin_serves_the_cached_copy_at_the_deadline(tmp_path, server):
    """Listing retries and the 30 s connect/read timeout all end at the listing deadline."""
    publish(server, "/a/sql", lora_adapter_files(BASE))
    resolver = make_resolver(
        tmp_path, server, "/a/{lora_name}", retries=3, list_deadline_s=DEADLINE
    )
    cached = await resolver.resolve_lora(BASE, "sql")
    server.silent = True
    again, served_in = await timed(resolver.resolve_lora(BASE, "sql"))
    assert again.lora_path == cached.lora_path
    failed, failed_in = await timed(resolver.resolve_lora(BASE, "never-cached"))
    assert isinstance(failed, AdapterDownloadError)
    assert "VLLM_LORA_RESOLVER_LIST_DEADLINE" in str(failed)
    assert served_in < DEADLINE + SLACK and failed_in < DEADLINE + SLACK


async def test_a_refused_connection_serves_the_cached_copy_at_once(tmp_path):
    """Nothing listens any more: that is known at once, and no retry waits for it."""
    from aiohttp import web

    files = FileServer()
    publish(files, "/a/sql", lora_adapter_files(BASE))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", files.handle)
    runner, files.url = await start_app(app)
    deadline = 30.0  # long: backoff of 8 retries alone would take 20 s of it
    resolver = make_resolver(tmp_path, files, "/a/{lora_name}", retries=8, list_deadline_s=deadline)
    cached = await resolver.resolve_lora(BASE, "sql")
    await runner.cleanup()
    again, served_in = await timed(resolver.resolve_lora(BASE, "sql"))
    assert again.lora_path == cached.lora_path
    failed, failed_in = await timed(resolver.resolve_lora(BASE, "never-cached"))
    assert isinstance(failed, AdapterDownloadError) and "Cannot connect" in str(failed)
    assert served_in < deadline / 3 and failed_in < deadline / 3


async def test_retries_with_backoff_recover(tmp_path, server):
    publish(server, "/a/sql", lora_adapter_files(BASE))
    resolver = make_resolver(tmp_path, server, "/a/{lora_name}", retries=3)
    server.faults = Faults(mode="status", status=503, times=2, only=WEIGHTS)
    assert await resolver.resolve_lora(BASE, "sql") is not None
    assert server.log.gets(WEIGHTS) == 3


async def test_bearer_token(tmp_path, server):
    publish(server, "/a/sql", lora_adapter_files(BASE))
    server.token = "s3cret"
    anonymous = make_resolver(tmp_path / "a", server, "/a/{lora_name}")
    with pytest.raises(AdapterDownloadError, match="401"):
        await anonymous.resolve_lora(BASE, "sql")
    authorised = make_resolver(tmp_path / "b", server, "/a/{lora_name}", token="s3cret")
    assert await authorised.resolve_lora(BASE, "sql") is not None


@pytest.fixture
def written(monkeypatch) -> dict[str, int]:
    """The most bytes any fetch of each file left on disk, however it ended."""
    return record_written_sizes(monkeypatch, HttpSource)


async def test_a_body_longer_than_announced_is_cut_off(tmp_path, server, written):
    """HEAD announces the real size; the GET goes on for 32 MiB more (chunked)."""
    files = lora_adapter_files(BASE)
    publish(server, "/a/sql", files)
    server.faults = Faults(mode="inflate", after=32 * 1024 * 1024, only=WEIGHTS)
    resolver = make_resolver(tmp_path, server, "/a/{lora_name}", retries=1)
    with pytest.raises(AdapterDownloadError, match="more than the .* bytes it listed"):
        await resolver.resolve_lora(BASE, "sql")
    assert server.log.gets(WEIGHTS) == 2  # retried once; each try stopped at the size
    assert written[WEIGHTS] <= len(files[WEIGHTS]) + CHUNK
    assert_clean(resolver)


async def test_oversize_and_malformed_refused(tmp_path, server):
    files = lora_adapter_files(BASE)
    publish(server, "/a/big", files)
    small = make_resolver(tmp_path / "a", server, "/a/{lora_name}", max_adapter_bytes=1000)
    with pytest.raises(LoRAAdapterError, match="limit"):
        await small.resolve_lora(BASE, "big")
    assert server.log.gets(WEIGHTS) == 0
    publish(server, "/a/bad", {**files, WEIGHTS: b"\x10" + files[WEIGHTS][1:]})
    publish(server, "/a/ia3", {**files, "adapter_config.json": b'{"peft_type": "IA3"}'})
    resolver = make_resolver(tmp_path / "b", server, "/a/{lora_name}")
    for name in ("bad", "ia3"):
        with pytest.raises(LoRAAdapterError):
            await resolver.resolve_lora(BASE, name)
        assert_clean(resolver)


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
    resolver = make_resolver(tmp_path, server, "/x/{lora_name}.tar.gz")
    with pytest.raises(LoRAAdapterError, match="archive member"):
        await resolver.resolve_lora(BASE, "sql")
    assert_clean(resolver)
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped").exists()


async def test_zip_bomb_refused(tmp_path, server):
    server.files["/x/sql.zip"] = zip_bytes([("adapter_model.safetensors", b"\0" * 20_000_000)])
    resolver = make_resolver(tmp_path, server, "/x/{lora_name}.zip", max_adapter_bytes=1_000_000)
    with pytest.raises(LoRAAdapterError, match="limit"):
        await resolver.resolve_lora(BASE, "sql")
    assert_clean(resolver)


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


def test_plugin_module_imports_no_aiohttp_client():
    code = "import sys, loraserve_http_resolver; assert 'aiohttp' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_served_through_engine_like_a_local_adapter(tmp_path, monkeypatch):
    """VLLM_PLUGINS=lora_http_resolver against a plain http.server directory listing."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from loraserve.lora.request import LoRARequest
    from loraserve.resolution.download.testing import engine_greedy_tokens
    from loraserve.testing import make_adapter, make_tiny_model

    model_dir = make_tiny_model(tmp_path / "model", seed=3)
    adapter = make_adapter(
        model_dir,
        tmp_path / "www" / BASE / "sql",
        targets=("q_proj", "v_proj"),
        base_model_name=BASE,
    )

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path / "www"))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        port = httpd.server_address[1]
        monkeypatch.setenv("VLLM_PLUGINS", "lora_http_resolver")
        monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
        monkeypatch.setenv(
            "VLLM_LORA_RESOLVER_HTTP_URL",
            f"http://127.0.0.1:{port}/{{base_model_name}}/{{lora_name}}",
        )
        monkeypatch.setenv("VLLM_LORA_RESOLVER_DOWNLOAD_DIR", str(tmp_path / "downloads"))
        remote, local, base = engine_greedy_tokens(
            model_dir, BASE, ["sql", LoRARequest("sql-local", 1, str(adapter)), None]
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert remote == local and remote != base
