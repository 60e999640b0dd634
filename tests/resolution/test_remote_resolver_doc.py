"""docs/resolvers.md cannot rot: its complete remote resolver runs as written, against the
shared download cache, and stays under 60 lines of ``loraserve.resolution`` alone."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from loraserve.resolution import DownloadCache
from loraserve.resolution.download import DownloadCacheConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "resolvers.md"
BLOCK = re.compile(r'^```python title="loraserve_share_resolver/__init__.py"\n(?P<body>.*?)^```$',
                   re.M | re.S)
BASE = "tiny-base"


@pytest.fixture
def share_plugin(tmp_path, monkeypatch):
    body = BLOCK.search(DOC.read_text(encoding="utf-8"))["body"]
    path = tmp_path / "loraserve_share_resolver.py"
    path.write_text(body, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("loraserve_share_resolver", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module, body


def test_the_example_is_short_and_uses_one_import(share_plugin):
    _, body = share_plugin
    assert len(body.splitlines()) < 60
    imported = set(re.findall(r"^from (\S+) import", body, re.M))
    assert {m for m in imported if m.startswith("loraserve")} == {"loraserve.resolution"}


async def test_the_example_resolves_through_the_download_cache(share_plugin, tmp_path):
    from loraserve.testing import make_adapter, make_tiny_model

    module, _ = share_plugin
    share = tmp_path / "share"
    model = make_tiny_model(tmp_path / "model", "llama")
    adapter = make_adapter(model, share / "sql", rank=4, seed=3, base_model_name=BASE)
    make_adapter(model, share / "other-base", rank=4, seed=4, base_model_name="another-model")
    cache = DownloadCache(DownloadCacheConfig(download_dir=tmp_path / "cache", retries=0))
    resolver = module.ShareResolver(str(share), cache=cache)

    found = await resolver.resolve_lora(BASE, "sql")
    local = Path(found.lora_path)
    assert local.is_relative_to(tmp_path / "cache") and found.lora_name == "sql"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (local / name).read_bytes() == (adapter / name).read_bytes()
    assert await resolver.resolve_lora(BASE, "missing") is None
    assert await resolver.resolve_lora(BASE, "../share/sql") is None
    from loraserve.errors import LoRAAdapterError

    with pytest.raises(LoRAAdapterError, match="another-model"):  # the one config rule
        await resolver.resolve_lora(BASE, "other-base")


def test_the_example_registers_only_when_configured(share_plugin, tmp_path, monkeypatch):
    module, _ = share_plugin
    registered = {}
    monkeypatch.delenv("LORA_SHARE_DIR", raising=False)
    module.register_lora_resolvers(register=registered.__setitem__)
    assert registered == {}
    monkeypatch.setenv("LORA_SHARE_DIR", str(tmp_path))
    module.register_lora_resolvers(register=registered.__setitem__)
    assert isinstance(registered["lora_share_resolver"], module.ShareResolver)
