"""Start-up reads metadata only: plugin modules and their heavy deps load on first need.

Runs in a fresh interpreter (from a temp dir) so sys.modules shows exactly what was imported.
Every installed plugin is enabled, remote ones included, to measure the worst case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraserve.plugins.discovery import discover_plugins

HEAVY = ("s3fs", "huggingface_hub", "transformers", "aiohttp.client", "boto3", "botocore")

PROLOGUE = """
import asyncio, json, sys
from importlib.metadata import entry_points
modules = {ep.name: ep.value.split(":")[0] for ep in entry_points(group="loraserve.plugins")}

def snapshot():
    return {
        "plugins": sorted(n for n, m in modules.items() if m in sys.modules),
        "heavy": sorted(h for h in HEAVY_MODULES if h in sys.modules),
    }
""".replace("HEAVY_MODULES", repr(HEAVY))

START_AND_RESOLVE = """
import loraserve
from loraserve.resolution.service import LoRAResolutionService
from loraserve.plugins import get_plugin_manager

enabled = get_plugin_manager().check()

async def load(request):
    return request

service = LoRAResolutionService("tiny-base", load)
started = snapshot()
try:
    asyncio.run(service.resolve("nobody-has-this"))
except Exception as exc:
    error = type(exc).__name__
resolved = snapshot()
print(json.dumps({"enabled": enabled, "started": started, "resolved": resolved, "error": error}))
"""

BUILD_ENGINE = """
from loraserve import LLM

llm = LLM(sys.argv[1], enable_lora=True)
print(json.dumps({"started": snapshot()}))
"""


def all_plugins_first_fs() -> str:
    names = sorted(discover_plugins())
    names.sort(key=lambda name: name != "lora_filesystem_resolver")
    return ",".join(names)


def run(script: str, tmp_path: Path, *args: str, plugins: str | None = None) -> dict:
    env = dict(os.environ)
    env["VLLM_PLUGINS"] = all_plugins_first_fs() if plugins is None else plugins
    env["VLLM_LORA_RESOLVER_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", PROLOGUE + script, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_start_up_imports_no_plugin_and_first_unknown_name_does(tmp_path):
    result = run(START_AND_RESOLVE, tmp_path)
    assert result["started"] == {"plugins": [], "heavy": []}
    assert "lora_filesystem_resolver" in result["enabled"], "pip install -e resolvers/filesystem"
    assert "lora_filesystem_resolver" in result["resolved"]["plugins"]
    assert result["error"] in ("LoRANotFoundError", "PluginError")


def test_building_the_engine_imports_no_plugin_nor_any_hub_client(tmp_path):
    """The engine reads tokenizer.json with ``tokenizers`` alone, so neither transformers nor
    huggingface_hub (nor torch, safetensors or tqdm through them) loads, plugins enabled or not."""
    from loraserve.testing import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "model")
    without = run(BUILD_ENGINE, tmp_path, str(model_dir), plugins="")["started"]
    with_all = run(BUILD_ENGINE, tmp_path, str(model_dir))["started"]
    assert without == {"plugins": [], "heavy": []}
    assert with_all == {"plugins": [], "heavy": []}


@pytest.mark.parametrize("module", ["loraserve", "loraserve.plugins", "loraserve.lora.resolver"])
def test_importing_core_modules_is_light(tmp_path, module):
    result = run(f"import {module}\nprint(json.dumps({{'started': snapshot()}}))", tmp_path)
    assert result["started"] == {"plugins": [], "heavy": []}
