"""One adapter-config rule, the same answer through every way in: the loader behind
``--lora-modules`` and the load endpoint, the filesystem resolver, and the download cache's
validation. The base model is checked by resolvers and the cache only, as vLLM does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraserve.errors import LoRAAdapterError
from loraserve.lora.adapter import load_adapter
from loraserve.lora.request import LoRARequest
from loraserve.model.spec import load_spec
from loraserve.resolution.download.validation import validate_adapter_dir
from loraserve.testing import make_adapter, make_tiny_model

BASE = "tiny-base"
# config change -> (loads by path, found by resolvers and the cache)
VARIANTS = {
    "as PEFT writes it": ({}, (True, True)),
    "peft_type in lower case": ({"peft_type": "lora"}, (True, True)),
    "base named with a trailing slash": ({"base_model_name_or_path": BASE + "/"}, (True, True)),
    "another base model": ({"base_model_name_or_path": "another-model"}, (True, False)),
    "IA3, not LoRA": ({"peft_type": "IA3"}, (False, False)),
    "DoRA": ({"use_dora": True}, (False, False)),
    "rank 0": ({"r": 0}, (False, False)),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, (False, False)),
}


@pytest.fixture(scope="module")
def base_adapter(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("one_rule")
    model = make_tiny_model(root / "model", "llama")
    return model, make_adapter(model, root / "adapter", rank=4, seed=7, base_model_name=BASE)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_every_way_in_gives_the_same_answer(base_adapter, tmp_path, variant):
    model, adapter = base_adapter
    change, (loads, found) = VARIANTS[variant]
    folder = tmp_path / "cache" / "sql"
    folder.mkdir(parents=True)
    for file in adapter.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **change}))

    try:
        load_adapter(LoRARequest("sql", 1, str(folder)), load_spec(model), max_rank=16)
        loaded = True
    except LoRAAdapterError:
        loaded = False
    resolver = pytest.importorskip("loraserve_filesystem_resolver").FilesystemResolver
    by_resolver = await resolver(tmp_path / "cache").resolve_lora(BASE, "sql") is not None
    try:
        validate_adapter_dir(folder, "sql", BASE, max_bytes=2**30)
        by_cache = True
    except LoRAAdapterError:
        by_cache = False
    assert (loaded, by_resolver, by_cache) == (loads, found, found)
