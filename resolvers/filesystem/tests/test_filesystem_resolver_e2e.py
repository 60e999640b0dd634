"""End to end: LLM.generate with a model name only lora_filesystem_resolver knows.

The reference is transformers + PEFT greedy decoding of the same adapter, never our output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from loraserve.errors import LoRANotFoundError
from loraserve.plugins import reset_plugin_manager
from loraserve.testing import make_adapter, make_tiny_model

SERVED = "tiny-base"
PROMPT = "the quick brown fox"
MAX_TOKENS = 8


def reference_greedy(model_dir: Path, adapter_dir: Path) -> list[int]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    out: list[int] = []
    with torch.no_grad():
        for _ in range(MAX_TOKENS):
            next_id = int(model(ids).logits[0, -1].argmax())
            out.append(next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    return out


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model_dir = make_tiny_model(tmp_path / "model")
    cache = tmp_path / "adapters"
    cache.mkdir()
    staged = make_adapter(model_dir, tmp_path / "staged", rank=8, base_model_name=SERVED)
    monkeypatch.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    monkeypatch.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", str(cache))
    reset_plugin_manager()
    yield model_dir, cache, staged
    reset_plugin_manager()


def test_generate_with_a_name_resolved_from_the_cache_dir(served):
    from loraserve import LLM, SamplingParams

    model_dir, cache, staged = served
    llm = LLM(str(model_dir), enable_lora=True, max_lora_rank=8, served_model_name=SERVED)
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)

    with pytest.raises(LoRANotFoundError, match="`../staged`"):
        llm.generate([PROMPT], greedy, lora_request="../staged")

    shutil.copytree(staged, cache / "sql")  # copied into place while serving
    [output] = llm.generate([PROMPT], greedy, lora_request="sql")
    assert list(output.outputs[0].token_ids) == reference_greedy(model_dir, staged)

    [base_output] = llm.generate([PROMPT], greedy)
    assert list(base_output.outputs[0].token_ids) != list(output.outputs[0].token_ids)


def test_a_found_but_corrupt_adapter_is_refused_with_its_reason(served):
    """vLLM's "was found but could not be loaded" (400), not "does not exist" (404)."""
    from loraserve import LLM, SamplingParams
    from loraserve.errors import LoRAAdapterError

    model_dir, cache, staged = served
    shutil.copytree(staged, cache / "broken")
    weights = cache / "broken" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    llm = LLM(str(model_dir), enable_lora=True, max_lora_rank=8, served_model_name=SERVED)
    greedy = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    with pytest.raises(LoRAAdapterError, match="'broken': was found but could not be loaded: "
                       "resolver 'lora_filesystem_resolver': adapter_model.safetensors is corrupt"):
        llm.generate([PROMPT], greedy, lora_request="broken")
    assert llm.engine.lora_manager.get("broken") is None
