"""lora_filesystem_resolver: finds adapters by name, refuses every name that could escape."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from loraserve_filesystem_resolver import FilesystemResolver

from loraserve.errors import LoRANotFoundError, PluginError
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import _LoRAResolverRegistry
from loraserve.plugins import PluginManager
from loraserve.resolution.service import LoRAResolutionService

BASE = "tiny-base"


def write_adapter(path: Path, base: str = BASE, peft_type: str = "LORA") -> Path:
    path.mkdir(parents=True)
    config = {"peft_type": peft_type, "base_model_name_or_path": base, "r": 8}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    write_adapter(cache / "sql")
    return cache


async def test_resolves_an_adapter_directory(cache):
    request = await FilesystemResolver(cache).resolve_lora(BASE, "sql")
    assert request == LoRARequest("sql", request.lora_int_id, str(cache / "sql"), BASE)
    assert request.lora_int_id > 0


async def test_absent_name_is_none(cache):
    assert await FilesystemResolver(cache).resolve_lora(BASE, "nope") is None


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../cache/sql", "sql/..", "a/b", "/etc", "sql\0", "..\\sql", "./sql"]
)
async def test_names_that_could_escape_are_refused(cache, name):
    assert await FilesystemResolver(cache).resolve_lora(BASE, name) is None


async def test_absolute_path_to_a_real_adapter_is_refused(cache):
    assert await FilesystemResolver(cache).resolve_lora(BASE, str(cache / "sql")) is None


async def test_symlinked_entries_are_followed_like_vllm(tmp_path, cache):
    """Operators link adapters in from shared storage; a client can only name an entry."""
    shared = write_adapter(tmp_path / "shared-storage" / "sql-v2")
    os.symlink(shared, cache / "linked")
    os.symlink(cache / "sql", cache / "alias")
    os.symlink(tmp_path / "nowhere", cache / "dangling")
    resolver = FilesystemResolver(cache)
    linked = await resolver.resolve_lora(BASE, "linked")
    assert linked is not None and linked.lora_path == str(shared)
    alias = await resolver.resolve_lora(BASE, "alias")
    assert alias is not None and alias.lora_path == str(cache / "sql")
    assert await resolver.resolve_lora(BASE, "dangling") is None


async def test_base_model_mismatch_is_none(cache):
    write_adapter(cache / "other", base="some-other-model")
    assert await FilesystemResolver(cache).resolve_lora(BASE, "other") is None
    assert await FilesystemResolver(cache).resolve_lora("some-other-model", "sql") is None


async def test_wrong_peft_type_is_none(cache):
    write_adapter(cache / "ia3", peft_type="IA3")
    assert await FilesystemResolver(cache).resolve_lora(BASE, "ia3") is None


async def test_peft_type_in_any_case_is_found_as_the_loader_accepts_it(cache):
    """One rule (loraserve.lora.peft_config): what --lora-modules loads, the resolver finds."""
    write_adapter(cache / "lower", peft_type="lora")
    found = await FilesystemResolver(cache).resolve_lora(BASE, "lower")
    assert found is not None and found.lora_path == str((cache / "lower").resolve())


async def test_missing_or_broken_config_is_none(cache):
    (cache / "empty").mkdir()
    (cache / "broken").mkdir()
    (cache / "broken" / "adapter_config.json").write_text("{not json")
    (cache / "afile").write_text("not a directory")
    resolver = FilesystemResolver(cache)
    for name in ("empty", "broken", "afile"):
        assert await resolver.resolve_lora(BASE, name) is None


def test_missing_or_file_cache_dir_is_a_clear_error(tmp_path):
    with pytest.raises(PluginError, match="does not exist"):
        FilesystemResolver(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PluginError, match="is not a directory"):
        FilesystemResolver(tmp_path / "file")


def test_plugin_registration_errors_on_a_bad_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", str(tmp_path / "missing"))
    manager = PluginManager(["lora_filesystem_resolver"], registry=_LoRAResolverRegistry())
    with pytest.raises(PluginError, match="VLLM_LORA_RESOLVER_CACHE_DIR"):
        manager.resolvers()


def test_plugin_without_cache_dir_registers_nothing(monkeypatch, caplog):
    monkeypatch.delenv("VLLM_LORA_RESOLVER_CACHE_DIR", raising=False)
    manager = PluginManager(["lora_filesystem_resolver"], registry=_LoRAResolverRegistry())
    with caplog.at_level(logging.WARNING):
        assert manager.resolvers() == []
    assert "VLLM_LORA_RESOLVER_CACHE_DIR is not set" in caplog.text


async def test_installed_plugin_resolves_through_the_core(cache, monkeypatch):
    """The entry point of the installed distribution, the manager and the resolution path."""
    monkeypatch.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", str(cache))
    manager = PluginManager(["lora_filesystem_resolver"], registry=_LoRAResolverRegistry())
    loads: list[LoRARequest] = []

    async def load(request: LoRARequest) -> LoRARequest:
        loads.append(request)
        return request

    service = LoRAResolutionService(BASE, load, resolvers=manager.resolvers)
    request = await service.resolve("sql")
    assert request.lora_path == str(cache / "sql") and loads == [request]
    with pytest.raises(LoRANotFoundError, match="`later`"):
        await service.resolve("later")
