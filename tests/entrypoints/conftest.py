"""A real server on 127.0.0.1 (in-process, on a background event loop) for openai-client tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai_harness import BASE, RunningServer, start_in_thread

from loraserve.testing import make_adapter


@pytest.fixture(scope="session")
def server_adapters(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """a1, a2: loaded at start-up; r1: only in the resolver dir; extra: for load/unload."""
    root = tmp_path_factory.mktemp("server_adapters")
    resolver_dir = root / "resolver"
    return {
        "a1": make_adapter(llama_dir, root / "a1", rank=8, seed=21),
        "a2": make_adapter(llama_dir, root / "a2", rank=16, seed=22),
        "extra": make_adapter(llama_dir, root / "extra", rank=4, seed=23),
        "r1": make_adapter(llama_dir, resolver_dir / "r1", rank=8, seed=24, base_model_name=BASE),
    }


@pytest.fixture(scope="module")
def server(llama_dir: Path, server_adapters: dict[str, Path]) -> Iterator[RunningServer]:
    """Base + a1, a2 at start-up; runtime updating on; the filesystem resolver enabled."""
    from loraserve.config import EngineConfig
    from loraserve.entrypoints.openai.server_config import LoRAModulePath, ServerConfig
    from loraserve.plugins import reset_plugin_manager

    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")
        env.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", str(server_adapters["r1"].parent))
        reset_plugin_manager()
        engine_config = EngineConfig(
            model=str(llama_dir), served_model_name=BASE, enable_lora=True, max_loras=2,
            max_cpu_loras=4, max_num_seqs=16, allow_runtime_lora_updating=True,
        )
        server_config = ServerConfig(
            port=0,
            lora_modules=[
                LoRAModulePath("a1", str(server_adapters["a1"])),
                LoRAModulePath("a2", str(server_adapters["a2"]), base_model_name=BASE),
            ],
            allow_runtime_lora_updating=True,
        )
        running, stop = start_in_thread(engine_config, server_config)
        try:
            yield running
        finally:
            stop()
            reset_plugin_manager()
