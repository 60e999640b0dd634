"""lora_s3_resolver against a real moto_server on 127.0.0.1, seen through a counting,
fault-injecting proxy (so "one download" and "killed mid-download" are observable)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from loraserve_s3_resolver import CHUNK, S3Resolver, S3Source, register_lora_resolvers

from loraserve.errors import AdapterDownloadError, LoRAAdapterError, PluginError
from loraserve.resolution.download import DownloadCache, DownloadCacheConfig
from loraserve.resolution.download.testing import (
    Faults,
    S3Proxy,
    lora_adapter_files,
    moto_server,
    record_written_sizes,
    start_app,
    tar_bytes,
)

pytest.importorskip("s3fs")
BASE = "tiny-base"
BUCKET = "adapters"
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def moto_url():
    with moto_server() as url:
        boto3_client(url).create_bucket(Bucket=BUCKET)
        yield url


def boto3_client(url: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
async def proxy(moto_url, monkeypatch):
    from aiohttp import web

    proxy = S3Proxy(moto_url, Faults(only=WEIGHTS))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner, url = await start_app(app)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    yield proxy
    await proxy.close()
    await runner.cleanup()


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def upload(moto_url: str, key_prefix: str, files: dict[str, bytes]) -> None:
    s3 = boto3_client(moto_url)
    for name, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"{key_prefix}/{name}", Body=data)


def make_resolver(tmp_path: Path, prefix: str, suffix: str = "", **config) -> S3Resolver:
    """Generous timeouts unless a test is about them: moto is slow on a busy machine."""
    settings = dict(download_dir=tmp_path / "cache", retries=0, timeout_s=30.0) | config
    settings.setdefault("list_deadline_s", 60.0)
    template = f"s3://{BUCKET}/{prefix}/{{base_model_name}}/{{lora_name}}{suffix}"
    return S3Resolver(template, cache=DownloadCache(DownloadCacheConfig(**settings)))


def assert_clean(resolver: S3Resolver) -> None:
    store = resolver._cache.store
    assert list(store.tmp.iterdir()) == [] and store.lru_entries() == []


async def test_resolves_downloads_and_revalidates(tmp_path, moto_url, proxy, prefix):
    files = lora_adapter_files(BASE, seed=1)
    upload(moto_url, f"{prefix}/{BASE}/sql", files)
    resolver = make_resolver(tmp_path, prefix)
    found = await resolver.resolve_lora(BASE, "sql")
    assert found.lora_name == "sql" and found.base_model_name == BASE
    assert (Path(found.lora_path) / WEIGHTS).read_bytes() == files[WEIGHTS]
    again = await resolver.resolve_lora(BASE, "sql")  # unchanged: listed, not downloaded
    assert again.lora_path == found.lora_path and proxy.log.gets(WEIGHTS) == 1
    changed = lora_adapter_files(BASE, seed=2)
    upload(moto_url, f"{prefix}/{BASE}/sql", changed)
    fresh = await resolver.resolve_lora(BASE, "sql")
    assert (Path(fresh.lora_path) / WEIGHTS).read_bytes() == changed[WEIGHTS]
    assert proxy.log.gets(WEIGHTS) == 2


async def test_unknown_adapter_and_unsafe_names_are_none(tmp_path, proxy, prefix):
    resolver = make_resolver(tmp_path, prefix)
    assert await resolver.resolve_lora(BASE, "nope") is None
    assert await resolver.resolve_lora(BASE, "../sql") is None


async def test_32_concurrent_requests_download_once(tmp_path, moto_url, proxy, prefix):
    upload(moto_url, f"{prefix}/{BASE}/sql", lora_adapter_files(BASE))
    resolver = make_resolver(tmp_path, prefix)
    found = await asyncio.gather(*(resolver.resolve_lora(BASE, "sql") for _ in range(32)))
    assert len({f.lora_path for f in found}) == 1
    assert proxy.log.gets(WEIGHTS) == 1


@pytest.mark.parametrize("mode", ["drop", "stall"])
async def test_server_dying_or_stalling_mid_download(tmp_path, moto_url, proxy, prefix, mode):
    upload(moto_url, f"{prefix}/{BASE}/sql", lora_adapter_files(BASE))
    resolver = make_resolver(tmp_path, prefix, timeout_s=1.0)
    proxy.faults.mode = mode
    with pytest.raises(AdapterDownloadError):
        await asyncio.wait_for(resolver.resolve_lora(BASE, "sql"), 60)  # a hang guard
    assert_clean(resolver)
    proxy.faults.mode = None
    patient = make_resolver(tmp_path, prefix)  # same cache; no 1 s limit on a busy machine
    found = await patient.resolve_lora(BASE, "sql")
    assert (Path(found.lora_path) / WEIGHTS).is_file()


async def test_s3_down_serves_the_cached_copy_within_the_deadline(tmp_path, monkeypatch, prefix):
    """moto stops: the cached copy is served, and a never-cached adapter is a download
    error, each within the listing deadline (plus slack for a busy machine), retries and
    all; connection refused is not retried at all."""
    deadline, slack = 2.0, 4.0
    with moto_server() as url:  # this test's own server, stopped below
        boto3_client(url).create_bucket(Bucket=BUCKET)
        upload(url, f"{prefix}/{BASE}/sql", lora_adapter_files(BASE))
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        resolver = make_resolver(tmp_path, prefix, retries=5, list_deadline_s=deadline)
        cached = await resolver.resolve_lora(BASE, "sql")

    async def timed(call):
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(call, 120)  # a hang guard
        except Exception as exc:
            result = exc
        return result, time.monotonic() - started

    again, served_in = await timed(resolver.resolve_lora(BASE, "sql"))
    failed, failed_in = await timed(resolver.resolve_lora(BASE, "never-cached"))
    assert again.lora_path == cached.lora_path
    assert isinstance(failed, AdapterDownloadError), failed
    assert served_in < deadline + slack and failed_in < deadline + slack


async def test_oversize_and_malformed_adapters_refused(tmp_path, moto_url, proxy, prefix):
    files = lora_adapter_files(BASE)
    upload(moto_url, f"{prefix}/{BASE}/big", files)
    small = make_resolver(tmp_path / "a", prefix, max_adapter_bytes=len(files[WEIGHTS]) // 2)
    with pytest.raises(LoRAAdapterError, match="limit"):
        await small.resolve_lora(BASE, "big")
    assert proxy.log.gets(WEIGHTS) == 0  # refused from the listing, before any download
    upload(moto_url, f"{prefix}/{BASE}/bad", {**files, WEIGHTS: files[WEIGHTS][:100]})
    resolver = make_resolver(tmp_path / "b", prefix)
    with pytest.raises(LoRAAdapterError):
        await resolver.resolve_lora(BASE, "bad")
    assert_clean(resolver)


@pytest.fixture
def written(monkeypatch) -> dict[str, int]:
    """The most bytes any fetch of each file left on disk, however it ended."""
    return record_written_sizes(monkeypatch, S3Source)


async def test_a_body_longer_than_listed_is_cut_off(tmp_path, moto_url, proxy, prefix, written):
    """The listing gives the real size; the GET goes on for 32 MiB more (chunked)."""
    files = lora_adapter_files(BASE)
    upload(moto_url, f"{prefix}/{BASE}/sql", files)
    proxy.faults.mode, proxy.faults.after = "inflate", 32 * 1024 * 1024
    resolver = make_resolver(tmp_path, prefix, retries=1)
    with pytest.raises(AdapterDownloadError, match="more than the .* bytes it listed"):
        await resolver.resolve_lora(BASE, "sql")
    assert proxy.log.gets(WEIGHTS) == 2  # retried once; each try stopped at the size
    assert written[WEIGHTS] <= len(files[WEIGHTS]) + CHUNK
    assert_clean(resolver)


async def test_archive_object(tmp_path, moto_url, proxy, prefix):
    files = lora_adapter_files(BASE)
    boto3_client(moto_url).put_object(
        Bucket=BUCKET, Key=f"{prefix}/{BASE}/sql.tar.gz", Body=tar_bytes(files.items())
    )
    resolver = make_resolver(tmp_path, prefix, suffix=".tar.gz")
    found = await resolver.resolve_lora(BASE, "sql")
    assert (Path(found.lora_path) / WEIGHTS).read_bytes() == files[WEIGHTS]


def test_hook_registers_only_when_configured(monkeypatch):
    registered = {}
    monkeypatch.delenv("VLLM_LORA_RESOLVER_S3_URI", raising=False)
    register_lora_resolvers(registered.__setitem__)
    assert registered == {}
    monkeypatch.setenv("VLLM_LORA_RESOLVER_S3_URI", "s3://b/{lora_name}")
    register_lora_resolvers(registered.__setitem__)
    assert isinstance(registered["lora_s3_resolver"], S3Resolver)
    with pytest.raises(PluginError, match="lora_name"):
        S3Resolver("s3://b/fixed")


def test_plugin_module_imports_no_s3fs():
    code = "import sys, loraserve_s3_resolver; assert 's3fs' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_served_through_engine_like_a_local_adapter(tmp_path, moto_url, monkeypatch, prefix):
    """VLLM_PLUGINS=lora_s3_resolver; model "sql" unknown -> S3 -> same greedy tokens as local."""
    from loraserve.lora.request import LoRARequest
    from loraserve.resolution.download import ADAPTER_FILES
    from loraserve.resolution.download.testing import engine_greedy_tokens
    from loraserve.testing import make_adapter, make_tiny_model

    model_dir = make_tiny_model(tmp_path / "model", seed=3)
    adapter = make_adapter(
        model_dir, tmp_path / "sql", targets=("q_proj", "v_proj"), base_model_name=BASE
    )
    upload(moto_url, f"{prefix}/{BASE}/sql", {n: (adapter / n).read_bytes() for n in ADAPTER_FILES})
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("VLLM_PLUGINS", "lora_s3_resolver")
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    monkeypatch.setenv(
        "VLLM_LORA_RESOLVER_S3_URI", f"s3://{BUCKET}/{prefix}/{{base_model_name}}/{{lora_name}}"
    )
    monkeypatch.setenv("VLLM_LORA_RESOLVER_DOWNLOAD_DIR", str(tmp_path / "downloads"))
    remote, local, base = engine_greedy_tokens(
        model_dir, BASE, ["sql", LoRARequest("sql-local", 1, str(adapter)), None]
    )
    assert remote == local and remote != base


async def test_unknown_falls_through_to_next_resolver_then_404(tmp_path, proxy, prefix):
    from loraserve.errors import LoRANotFoundError
    from loraserve.lora.request import LoRARequest
    from loraserve.lora.resolver import LoRAResolver
    from loraserve.resolution.service import LoRAResolutionService

    class Fallback(LoRAResolver):
        async def resolve_lora(self, base_model_name, lora_name):
            return LoRARequest(lora_name, 1, "/elsewhere") if lora_name == "known" else None

    async def load(request):
        return request

    s3 = make_resolver(tmp_path, prefix)
    chain = [("lora_s3_resolver", s3), ("fallback", Fallback())]
    service = LoRAResolutionService(BASE, load, resolvers=lambda: chain)
    assert (await service.resolve("known")).lora_path == "/elsewhere"
    with pytest.raises(LoRANotFoundError):
        await service.resolve("nowhere")
