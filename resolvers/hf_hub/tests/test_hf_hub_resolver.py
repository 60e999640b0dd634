"""lora_hf_hub_resolver through huggingface_hub, pointed (HF_ENDPOINT) at a small local Hub:
the revision API, the tree API and file resolve with ETag / X-Repo-Commit headers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from loraserve_hf_hub_resolver import (
    HfHubResolver,
    RepoAllowlist,
    register_lora_resolvers,
    split_adapter_name,
)

from loraserve.errors import AdapterDownloadError, LoRAAdapterError
from loraserve.resolution.download import DownloadCache, DownloadCacheConfig
from loraserve.resolution.download.testing import (
    FakeHub,
    Faults,
    hub_app,
    lora_adapter_files,
    start_app,
)

pytest.importorskip("huggingface_hub")
BASE = "tiny-base"
WEIGHTS = "adapter_model.safetensors"


def hub_env(monkeypatch, url: str, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
async def hub(monkeypatch, tmp_path):
    fake = FakeHub()
    runner, url = await start_app(hub_app(fake))
    hub_env(monkeypatch, url, tmp_path)
    yield fake
    await runner.cleanup()


def make_resolver(tmp_path: Path, repo_list="org", **config) -> HfHubResolver:
    """Generous timeouts unless a test is about them: nothing here may need an idle machine."""
    settings = dict(download_dir=tmp_path / "cache", retries=0, timeout_s=30.0) | config
    settings.setdefault("list_deadline_s", 60.0)
    return HfHubResolver(repo_list, cache=DownloadCache(DownloadCacheConfig(**settings)))


def test_names_and_allowlist():
    assert split_adapter_name("org/repo") == ("org/repo", "")
    assert split_adapter_name("org/repo/sql/v1/") == ("org/repo", "sql/v1")
    for bad in ("sql", "org/../etc", "org/repo/../x", "/org/repo", "org//repo"):
        assert split_adapter_name(bad) is None
    allow = RepoAllowlist("Org/Repo, team ,")
    assert allow.allows("org/repo") and allow.allows("team/anything")
    assert not allow.allows("org/other") and not allow.allows("evil/repo")
    assert not RepoAllowlist("") and not RepoAllowlist(None)


async def test_resolves_repo_root_and_subpath(tmp_path, hub):
    root, sub = lora_adapter_files(BASE, seed=1), lora_adapter_files(BASE, seed=2)
    hub.repos["org/adapters"] = {
        **root,
        **{f"sql/{n}": d for n, d in sub.items()},
        "README.md": b"x",
    }
    resolver = make_resolver(tmp_path)
    found = await resolver.resolve_lora(BASE, "org/adapters")
    assert (Path(found.lora_path) / WEIGHTS).read_bytes() == root[WEIGHTS]
    found = await resolver.resolve_lora(BASE, "org/adapters/sql")
    assert (Path(found.lora_path) / WEIGHTS).read_bytes() == sub[WEIGHTS]
    assert Path(found.lora_path).is_relative_to(tmp_path / "hf-cache")  # the Hub's own cache
    assert hub.log.gets("README.md") == 0  # adapter files only


async def test_allowlist_and_unknown(tmp_path, hub):
    hub.repos["org/a"] = lora_adapter_files(BASE)
    hub.repos["evil/a"] = lora_adapter_files(BASE)
    assert await make_resolver(tmp_path, repo_list="").resolve_lora(BASE, "org/a") is None
    assert await make_resolver(tmp_path, repo_list="org/b").resolve_lora(BASE, "org/a") is None
    assert sum(hub.log.counts.values()) == 0  # refused without asking the Hub
    resolver = make_resolver(tmp_path, repo_list="org")
    assert await resolver.resolve_lora(BASE, "evil/a") is None
    assert await resolver.resolve_lora(BASE, "org/missing") is None
    assert await resolver.resolve_lora(BASE, "org/a/nosuchdir") is None
    assert await resolver.resolve_lora(BASE, "org/a") is not None


async def test_reuses_adapters_already_in_the_hub_cache(tmp_path, hub):
    from huggingface_hub import snapshot_download

    hub.repos["org/a"] = lora_adapter_files(BASE)
    # the Hub's own tool, in a thread: the fake Hub runs on this event loop
    await asyncio.to_thread(
        snapshot_download, "org/a", cache_dir=tmp_path / "hf-cache", endpoint=hub_url()
    )
    before = hub.log.gets(WEIGHTS)
    found = await make_resolver(tmp_path).resolve_lora(BASE, "org/a")
    assert found is not None and hub.log.gets(WEIGHTS) == before


def hub_url() -> str:
    import os

    return os.environ["HF_ENDPOINT"]


async def test_32_concurrent_requests_download_once(tmp_path, hub):
    hub.repos["org/a"] = lora_adapter_files(BASE)
    resolver = make_resolver(tmp_path)
    found = await asyncio.gather(*(resolver.resolve_lora(BASE, "org/a") for _ in range(32)))
    assert len({f.lora_path for f in found}) == 1
    assert hub.log.gets(WEIGHTS) == 1


async def test_changed_adapter_refetched_unchanged_not(tmp_path, hub):
    hub.repos["org/a"] = lora_adapter_files(BASE, seed=1)
    resolver = make_resolver(tmp_path)
    first = await resolver.resolve_lora(BASE, "org/a")
    hub.repos["org/a"]["README.md"] = b"docs changed, adapter did not"
    same = await resolver.resolve_lora(BASE, "org/a")
    assert same.lora_path == first.lora_path and hub.log.gets(WEIGHTS) == 1
    changed = lora_adapter_files(BASE, seed=2)
    hub.repos["org/a"].update(changed)
    fresh = await resolver.resolve_lora(BASE, "org/a")
    assert (Path(fresh.lora_path) / WEIGHTS).read_bytes() == changed[WEIGHTS]
    assert hub.log.gets(WEIGHTS) == 2


async def test_server_failing_mid_download_then_next_succeeds(tmp_path, hub):
    hub.repos["org/a"] = lora_adapter_files(BASE)
    resolver = make_resolver(tmp_path)
    hub.faults = Faults(mode="status", status=500, only=WEIGHTS)
    with pytest.raises(AdapterDownloadError):
        await resolver.resolve_lora(BASE, "org/a")
    assert resolver._cache.store.lru_entries() == []
    assert not list((tmp_path / "hf-cache").rglob(WEIGHTS))  # nothing loadable
    hub.faults = Faults()
    assert await resolver.resolve_lora(BASE, "org/a") is not None


@pytest.mark.parametrize("mode", ["drop", "stall"])
async def test_interrupted_transfer_is_resumed(tmp_path, hub, monkeypatch, mode):
    """huggingface_hub resumes a cut or stalled transfer itself; the result is validated."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    files = lora_adapter_files(BASE)
    hub.repos["org/a"] = files
    hub.faults = Faults(mode=mode, after=1000, times=1, only=WEIGHTS)
    found = await make_resolver(tmp_path).resolve_lora(BASE, "org/a")
    assert (Path(found.lora_path) / WEIGHTS).read_bytes() == files[WEIGHTS]
    assert hub.log.gets(WEIGHTS) >= 2  # cut once (a slow moment may add a resume, not a fault)


async def test_oversize_and_malformed_refused(tmp_path, hub):
    files = lora_adapter_files(BASE)
    hub.repos["org/big"] = files
    with pytest.raises(LoRAAdapterError, match="limit"):
        await make_resolver(tmp_path / "a", max_adapter_bytes=1000).resolve_lora(BASE, "org/big")
    assert hub.log.gets(WEIGHTS) == 0
    hub.repos["org/bad"] = {**files, WEIGHTS: files[WEIGHTS][:-1]}
    hub.repos["org/other"] = lora_adapter_files("some-other-base")
    resolver = make_resolver(tmp_path / "b")
    for name in ("org/bad", "org/other"):
        with pytest.raises(LoRAAdapterError):
            await resolver.resolve_lora(BASE, name)
    assert resolver._cache.store.lru_entries() == []


async def test_a_file_longer_than_listed_is_cut_off(tmp_path, hub):
    """The Hub's API lists the weights as 100 bytes; the file is larger."""
    files = lora_adapter_files(BASE, hidden=256)
    hub.repos["org/a"] = files
    hub.listed_sizes[WEIGHTS] = 100
    resolver = make_resolver(tmp_path)
    with pytest.raises(AdapterDownloadError, match="more than the .* bytes it listed"):
        await resolver.resolve_lora(BASE, "org/a")
    blobs = (tmp_path / "hf-cache").rglob("blobs/*")  # complete and .incomplete downloads
    listed = len(files["adapter_config.json"]) + 100
    assert sum(p.stat().st_size for p in blobs) <= listed < len(files[WEIGHTS])
    assert resolver._cache.store.lru_entries() == []


async def test_hub_down_serves_the_cached_copy_at_once(tmp_path, monkeypatch):
    """Refused connections are not retried: the copy is served, a new name fails, quickly."""
    import time

    fake = FakeHub()
    fake.repos["org/a"] = lora_adapter_files(BASE)
    runner, url = await start_app(hub_app(fake))
    hub_env(monkeypatch, url, tmp_path)
    deadline = 30.0  # long: backoff of 8 retries alone would take 20 s of it
    resolver = make_resolver(tmp_path, retries=8, list_deadline_s=deadline)
    cached = await resolver.resolve_lora(BASE, "org/a")
    await runner.cleanup()
    started = time.monotonic()
    again = await asyncio.wait_for(resolver.resolve_lora(BASE, "org/a"), 60)
    with pytest.raises(AdapterDownloadError):
        await asyncio.wait_for(resolver.resolve_lora(BASE, "org/new"), 60)
    assert again.lora_path == cached.lora_path
    assert time.monotonic() - started < deadline / 3


def test_hook_registers_only_with_an_allowlist(monkeypatch):
    registered = {}
    monkeypatch.setenv("VLLM_LORA_RESOLVER_HF_REPO_LIST", " , ")
    register_lora_resolvers(registered.__setitem__)
    assert registered == {}
    monkeypatch.setenv("VLLM_LORA_RESOLVER_HF_REPO_LIST", "org/a,team")
    register_lora_resolvers(registered.__setitem__)
    assert registered["lora_hf_hub_resolver"].allowlist.owners == {"team"}


def test_plugin_module_imports_no_huggingface_hub():
    code = "import sys, loraserve_hf_hub_resolver; assert 'huggingface_hub' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_served_through_engine_like_a_local_adapter(tmp_path, monkeypatch):
    """VLLM_PLUGINS=lora_hf_hub_resolver; model "org/adapters/sql" -> Hub -> same tokens."""
    from loraserve.lora.request import LoRARequest
    from loraserve.resolution.download import ADAPTER_FILES
    from loraserve.resolution.download.testing import AppThread, engine_greedy_tokens
    from loraserve.testing import make_adapter, make_tiny_model

    model_dir = make_tiny_model(tmp_path / "model", seed=3)
    adapter = make_adapter(
        model_dir, tmp_path / "sql", targets=("q_proj", "v_proj"), base_model_name=BASE
    )
    fake = FakeHub()
    fake.repos["org/adapters"] = {f"sql/{n}": (adapter / n).read_bytes() for n in ADAPTER_FILES}
    server = AppThread(hub_app(fake))
    try:
        hub_env(monkeypatch, server.url, tmp_path)
        monkeypatch.setenv("VLLM_PLUGINS", "lora_hf_hub_resolver")
        monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
        monkeypatch.setenv("VLLM_LORA_RESOLVER_HF_REPO_LIST", "org/adapters")
        monkeypatch.setenv("VLLM_LORA_RESOLVER_DOWNLOAD_DIR", str(tmp_path / "downloads"))
        remote, local, base = engine_greedy_tokens(
            model_dir, BASE, ["org/adapters/sql", LoRARequest("sql-local", 1, str(adapter)), None]
        )
    finally:
        server.close()
    assert remote == local and remote != base
