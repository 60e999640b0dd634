"""Several --served-model-name values: every name is the base model (vLLM's rule); the first
is the one resolvers and adapter parents use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai_harness import RunningServer, post_json, start_in_thread

NAMES = ["main", "alias"]


@pytest.fixture(scope="module")
def named_server(llama_dir: Path, server_adapters: dict[str, Path]) -> Iterator[RunningServer]:
    from loraserve.config import EngineConfig
    from loraserve.entrypoints.openai.server_config import LoRAModulePath, ServerConfig

    running, stop = start_in_thread(
        EngineConfig(model=str(llama_dir), served_model_name=NAMES[0], enable_lora=True,
                     allow_runtime_lora_updating=True),
        ServerConfig(port=0, served_model_aliases=NAMES[1:], allow_runtime_lora_updating=True,
                     lora_modules=[LoRAModulePath("a1", str(server_adapters["a1"]), "alias")]),
    )
    try:
        yield running
    finally:
        stop()


def test_every_name_serves_the_base_model(named_server: RunningServer):
    api = openai.OpenAI(base_url=f"{named_server.url}/v1", api_key="unused", max_retries=0)
    cards = {m.id: m.model_dump() for m in api.models.list().data}
    assert [m for m in cards if m in NAMES] == NAMES
    assert all(cards[n]["parent"] is None for n in NAMES)
    assert cards["a1"]["parent"] == "main"  # listed under the first name, even if it named an alias
    texts = {
        name: api.completions.create(model=name, prompt="hello", max_tokens=6, temperature=0).choices[0].text
        for name in NAMES
    }
    assert texts["main"] == texts["alias"]
    adapter = api.completions.create(model="a1", prompt="hello", max_tokens=6, temperature=0)
    assert adapter.choices[0].text != texts["main"]


def test_an_adapter_cannot_take_a_base_model_name(named_server: RunningServer, server_adapters):
    status, text = post_json(f"{named_server.url}/v1/load_lora_adapter",
                             {"lora_name": "alias", "lora_path": str(server_adapters["extra"])})
    assert status == 400 and "same name as the base model" in text
