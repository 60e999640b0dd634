"""Shared fixtures: tiny random models of each family and PEFT adapters, built once per run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraserve.testing import ALL_TARGETS, ARCHITECTURES, make_adapter, make_tiny_model

# Adapters of different ranks and target sets; "rs" also uses rsLoRA and "bin" the .bin format.
ADAPTERS = {
    "sql": dict(rank=8, targets=("q_proj", "v_proj"), seed=11),
    "chat": dict(rank=16, targets=ALL_TARGETS, seed=12, use_rslora=True),
    "mlp": dict(rank=4, targets=("gate_proj", "up_proj", "down_proj", "o_proj"), seed=13),
    "bin": dict(rank=8, targets=("k_proj", "o_proj"), seed=14, safe_serialization=False),
}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: make_tiny_model(root / arch, arch=arch, seed=3) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def llama_dir(model_dirs: dict[str, Path]) -> Path:
    return model_dirs["llama"]


@pytest.fixture(scope="session")
def adapter_dirs(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(llama_dir, root / name, **kw) for name, kw in ADAPTERS.items()}


@pytest.fixture(scope="session")
def hf(llama_dir: Path):
    """transformers' own Llama over the tiny model: the reference for logits and processors."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_greedy():
    """Reference greedy tokens from transformers (+ PEFT when an adapter is given).

    Compared with ``ignore_eos=True`` outputs, so EOS may be chosen and does not end the
    generation, as in vLLM. (HF's ``min_new_tokens`` would instead forbid EOS, and differ
    from the engine wherever EOS is the argmax: 8 of 48 64-token generations measured.)
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache: dict = {}

    def generate(model_dir: Path, prompt: str, max_new_tokens: int, adapter: Path | None = None,
                 dtype: torch.dtype = torch.float32):
        key = (str(model_dir), str(adapter), dtype)
        if key not in cache:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
            if adapter is not None:
                model = PeftModel.from_pretrained(model, str(adapter))
            cache[key] = (model.eval(), AutoTokenizer.from_pretrained(str(model_dir)))
        model, tokenizer = cache[key]
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=None,  # never stop, never suppress EOS
                pad_token_id=tokenizer.pad_token_id or 0,
            )
        return out[0, ids.shape[1] :].tolist()

    return generate


@pytest.fixture(scope="session")
def smollm2_demo(tmp_path_factory: pytest.TempPathFactory):
    """The real demo (SmolLM2-135M-Instruct and the shipped adapters), built once per run."""
    from loraserve.demo import ensure_demo, smollm2

    if smollm2.find_gguf() is None:  # CI installs it; a test that needs it must not pass without
        pytest.fail(f"{smollm2.MODEL_NAME} is not installed: {smollm2.INSTALL}")
    return ensure_demo(tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="session")
def smollm2_llm(smollm2_demo):
    """One engine over the real demo model with room for every shipped adapter."""
    from loraserve import LLM

    return LLM(str(smollm2_demo.model), served_model_name=smollm2_demo.served_model_name,
               enable_lora=True, max_loras=len(smollm2_demo.adapters), max_lora_rank=16)
