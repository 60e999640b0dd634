"""lora_s3_resolver against a real moto_server on 127.0.0.1, seen through a counting,
fault-injecting proxy (conftest.py): the remote resolver contract, then what only S3 does."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from loraserve_s3_resolver import CHUNK, S3Resolver, S3Source, register_lora_resolvers

from loraserve.errors import AdapterDownloadError, PluginError
from loraserve.resolution.download import ADAPTER_WEIGHTS
from loraserve.testing.adapters import lora_adapter_files, tar_bytes
from loraserve.testing.probes import record_written_sizes
from loraserve.testing.resolver_contract import (
    BASE,
    RemoteBackend,
    RemoteResolverContract,
    assert_nothing_kept,
    download_cache,
)
from loraserve.testing.servers import Faults

pytest.importorskip("s3fs")

BUCKET = "adapters"


class S3Backend(RemoteBackend):
    """Adapters under ``s3://adapters/<prefix>/tiny-base/<name>/`` in moto, behind the proxy."""

    def __init__(self, s3, proxy, prefix: str) -> None:
        self.s3, self.proxy, self.prefix = s3, proxy, prefix
        self.log = proxy.log

    @property
    def faults(self) -> Faults:
        return self.proxy.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self.proxy.faults = faults

    def template(self, suffix: str = "") -> str:
        return f"s3://{BUCKET}/{self.prefix}/{{base_model_name}}/{{lora_name}}{suffix}"

    def publish(self, stem: str, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            self.s3.put_object(Bucket=BUCKET, Key=f"{self.prefix}/{BASE}/{stem}/{name}", Body=data)

    def resolver(self, cache) -> S3Resolver:
        return S3Resolver(self.template(), cache=cache)

    def plugin_env(self) -> dict[str, str]:
        return {"VLLM_LORA_RESOLVER_S3_URI": self.template()}  # AWS_ENDPOINT_URL: the proxy

    async def stop(self) -> None:
        await self.proxy.stop()


@pytest.fixture
def backend(s3, proxy) -> S3Backend:
    return S3Backend(s3, proxy, prefix=f"t-{uuid.uuid4().hex[:8]}")


class TestS3ResolverContract(RemoteResolverContract):
    plugin, plugin_module, client_module = "lora_s3_resolver", "loraserve_s3_resolver", "s3fs"
    fault_errors = {
        "drop": "payload is not completed|Disconnected|closed",
        "stall": "Read timeout|no data for 1s",
    }
    refused_error = "Could not connect"


@pytest.fixture
def written(monkeypatch) -> dict[str, int]:
    """The most bytes any fetch of each file left on disk, however it ended."""
    return record_written_sizes(monkeypatch, S3Source)


async def test_a_body_longer_than_listed_is_cut_off(tmp_path, backend, written):
    """The listing gives the real size; the GET goes on for 32 MiB more (chunked)."""
    files = lora_adapter_files(BASE)
    backend.publish("sql", files)
    backend.faults = Faults(mode="inflate", after=32 * 1024 * 1024, only=ADAPTER_WEIGHTS)
    cache = download_cache(tmp_path, retries=1)
    with pytest.raises(AdapterDownloadError, match="more than the .* bytes it listed"):
        await backend.resolver(cache).resolve_lora(BASE, "sql")
    assert backend.log.gets(ADAPTER_WEIGHTS) == 2  # retried once; each try stopped at the size
    assert written[ADAPTER_WEIGHTS] <= len(files[ADAPTER_WEIGHTS]) + CHUNK
    assert_nothing_kept(cache)


async def test_archive_object(tmp_path, backend):
    files = lora_adapter_files(BASE)
    key = f"{backend.prefix}/{BASE}/sql.tar.gz"
    backend.s3.put_object(Bucket=BUCKET, Key=key, Body=tar_bytes(files.items()))
    resolver = S3Resolver(backend.template(".tar.gz"), cache=download_cache(tmp_path))
    found = await resolver.resolve_lora(BASE, "sql")
    assert (Path(found.lora_path) / ADAPTER_WEIGHTS).read_bytes() == files[ADAPTER_WEIGHTS]


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
