"""lora_hf_hub_resolver through huggingface_hub, pointed (HF_ENDPOINT) at a small local Hub
(conftest.py): the remote resolver contract, then what only the Hub resolver does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from loraserve_hf_hub_resolver import (
    HfHubResolver,
    RepoAllowlist,
    register_lora_resolvers,
    split_adapter_name,
)

from loraserve.errors import AdapterDownloadError
from loraserve.resolution.download import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from loraserve.testing.adapters import lora_adapter_files
from loraserve.testing.resolver_contract import (
    BASE,
    RemoteBackend,
    RemoteResolverContract,
    download_cache,
)
from loraserve.testing.servers import Faults

pytest.importorskip("huggingface_hub")
WEIGHTS = ADAPTER_WEIGHTS


class HubBackend(RemoteBackend):
    """Adapter ``org/<stem>`` is the root of repo ``org/<stem>``; the allowlist is ``org``."""

    def __init__(self, hub, hf_cache: Path) -> None:
        self.hub, self.hf_cache = hub, hf_cache
        self.log = hub.log

    @property
    def faults(self) -> Faults:
        return self.hub.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self.hub.faults = faults

    def name(self, stem: str) -> str:
        return f"org/{stem}"

    def publish(self, stem: str, files: dict[str, bytes]) -> None:
        self.hub.repos[self.name(stem)] = dict(files)

    def resolver(self, cache) -> HfHubResolver:
        return HfHubResolver("org", cache=cache)

    def plugin_env(self) -> dict[str, str]:
        return {"VLLM_LORA_RESOLVER_HF_REPO_LIST": "org"}  # HF_ENDPOINT: set by the fixture

    async def stop(self) -> None:
        await self.hub.stop()

    def stray_files(self) -> list[Path]:
        """Weights huggingface_hub would hand out: snapshot links, not .incomplete blobs."""
        return list(self.hf_cache.rglob(WEIGHTS))


@pytest.fixture
def backend(hub, tmp_path) -> HubBackend:
    return HubBackend(hub, tmp_path / "hf-cache")


class TestHubResolverContract(RemoteResolverContract):
    plugin = "lora_hf_hub_resolver"
    plugin_module, client_module = "loraserve_hf_hub_resolver", "huggingface_hub"
    # only errors: huggingface_hub resumes a cut or stalled transfer itself (tested below)
    fault_errors = {"status": "HTTP 500 from the Hub"}
    refused_error = "Connection refused"


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
    resolver = HfHubResolver("org", cache=download_cache(tmp_path))
    found = await resolver.resolve_lora(BASE, "org/adapters")
    assert (Path(found.lora_path) / WEIGHTS).read_bytes() == root[WEIGHTS]
    found = await resolver.resolve_lora(BASE, "org/adapters/sql")
    assert (Path(found.lora_path) / WEIGHTS).read_bytes() == sub[WEIGHTS]
    assert Path(found.lora_path).is_relative_to(tmp_path / "hf-cache")  # the Hub's own cache
    assert hub.log.gets("README.md") == 0  # adapter files only


async def test_allowlist(tmp_path, hub):
    hub.repos["org/a"] = lora_adapter_files(BASE)
    hub.repos["evil/a"] = lora_adapter_files(BASE)
    cache = download_cache(tmp_path)
    assert await HfHubResolver("", cache=cache).resolve_lora(BASE, "org/a") is None
    assert await HfHubResolver("org/b", cache=cache).resolve_lora(BASE, "org/a") is None
    resolver = HfHubResolver("org", cache=cache)
    assert await resolver.resolve_lora(BASE, "evil/a") is None
    assert sum(hub.log.counts.values()) == 0  # refused without asking the Hub
    assert await resolver.resolve_lora(BASE, "org/a/nosuchdir") is None
    assert await resolver.resolve_lora(BASE, "org/a") is not None


async def test_reuses_adapters_already_in_the_hub_cache(tmp_path, hub):
    from huggingface_hub import snapshot_download

    hub.repos["org/a"] = lora_adapter_files(BASE)
    # the Hub's own tool, in a thread: the fake Hub runs on this event loop
    await asyncio.to_thread(
        snapshot_download, "org/a", cache_dir=tmp_path / "hf-cache", endpoint=hub.url
    )
    before = hub.log.gets(WEIGHTS)
    found = await HfHubResolver("org", cache=download_cache(tmp_path)).resolve_lora(BASE, "org/a")
    assert found is not None and hub.log.gets(WEIGHTS) == before


async def test_a_new_commit_that_leaves_the_adapter_alone_refetches_nothing(tmp_path, hub):
    hub.repos["org/a"] = lora_adapter_files(BASE, seed=1)
    resolver = HfHubResolver("org", cache=download_cache(tmp_path))
    first = await resolver.resolve_lora(BASE, "org/a")
    hub.repos["org/a"]["README.md"] = b"docs changed, adapter did not"
    same = await resolver.resolve_lora(BASE, "org/a")
    assert same.lora_path == first.lora_path
    assert hub.log.gets(WEIGHTS) == 1 and hub.log.gets(ADAPTER_CONFIG) == 1


@pytest.mark.parametrize("mode", ["drop", "stall"])
async def test_interrupted_transfer_is_resumed(tmp_path, hub, monkeypatch, mode):
    """huggingface_hub resumes a cut or stalled transfer itself; the result is validated."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    files = lora_adapter_files(BASE)
    hub.repos["org/a"] = files
    hub.faults = Faults(mode=mode, after=1000, times=1, only=WEIGHTS)
    found = await HfHubResolver("org", cache=download_cache(tmp_path)).resolve_lora(BASE, "org/a")
    assert (Path(found.lora_path) / WEIGHTS).read_bytes() == files[WEIGHTS]
    assert hub.log.gets(WEIGHTS) >= 2  # cut once (a slow moment may add a resume, not a fault)


async def test_a_file_longer_than_listed_is_cut_off(tmp_path, hub):
    """The Hub's API lists the weights as 100 bytes; the file is larger."""
    files = lora_adapter_files(BASE, hidden=256)
    hub.repos["org/a"] = files
    hub.listed_sizes[WEIGHTS] = 100
    cache = download_cache(tmp_path)
    with pytest.raises(AdapterDownloadError, match="more than the .* bytes it listed"):
        await HfHubResolver("org", cache=cache).resolve_lora(BASE, "org/a")
    blobs = (tmp_path / "hf-cache").rglob("blobs/*")  # complete and .incomplete downloads
    listed = len(files[ADAPTER_CONFIG]) + 100
    assert sum(p.stat().st_size for p in blobs) <= listed < len(files[WEIGHTS])
    assert cache.store.lru_entries() == []


def test_hook_registers_only_with_an_allowlist(monkeypatch):
    registered = {}
    monkeypatch.setenv("VLLM_LORA_RESOLVER_HF_REPO_LIST", " , ")
    register_lora_resolvers(registered.__setitem__)
    assert registered == {}
    monkeypatch.setenv("VLLM_LORA_RESOLVER_HF_REPO_LIST", "org/a,team")
    register_lora_resolvers(registered.__setitem__)
    assert registered["lora_hf_hub_resolver"].allowlist.owners == {"team"}
