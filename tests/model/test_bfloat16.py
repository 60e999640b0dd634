"""bfloat16 on CPU: which dtype "auto" picks, and greedy tokens against transformers in bfloat16."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from loraserve import LLM, SamplingParams
from loraserve.model import spec as spec_module
from loraserve.model.spec import cpu_has_native_bf16, load_spec, resolve_dtype
from loraserve.testing import make_tiny_model

PROMPTS = ["hello world", "the quick brown fox jumps over the lazy dog", "select", "a b c d e f"]
MAX_TOKENS = 16
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory: pytest.TempPathFactory):
    """A checkpoint saved in bfloat16 (config.json's dtype says so)."""
    return make_tiny_model(tmp_path_factory.mktemp("bf16") / "model", seed=3, dtype=torch.bfloat16)


@pytest.mark.parametrize(("native", "checkpoint", "expected"), [
    (True, torch.bfloat16, torch.bfloat16),
    (True, torch.float16, torch.bfloat16),
    (True, torch.float32, torch.float32),  # float32 checkpoints stay exact
    (False, torch.bfloat16, torch.float32),  # emulated bfloat16 is slower than float32
])
def test_auto_dtype_on_cpu(monkeypatch, bf16_dir, native, checkpoint, expected):
    monkeypatch.setattr(spec_module, "cpu_has_native_bf16", lambda: native)
    spec = dataclasses.replace(load_spec(bf16_dir), config_dtype=checkpoint)
    assert resolve_dtype("auto", spec, CPU) == expected
    assert resolve_dtype("float32", spec, CPU) == torch.float32  # an explicit dtype always wins


def test_auto_dtype_is_logged_and_used(bf16_dir, caplog):
    with caplog.at_level(logging.INFO):
        llm = LLM(str(bf16_dir), enable_lora=True)
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert llm.engine.model.weights.embed.dtype == expected
    assert f"dtype auto: {str(expected).removeprefix('torch.')} (checkpoint bfloat16" in caplog.text
    assert llm.engine.lora_manager.slots.dtype == torch.float32  # the LoRA delta in float32


def test_bfloat16_greedy_matches_transformers_in_bfloat16(bf16_dir, hf_greedy):
    llm = LLM(str(bf16_dir), dtype="bfloat16")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = llm.generate(PROMPTS, params)
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        expected = hf_greedy(bf16_dir, prompt, MAX_TOKENS, dtype=torch.bfloat16)
        assert output.outputs[0].token_ids == expected
