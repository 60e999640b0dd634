"""Our model code against transformers' greedy decoding, for every supported family."""

from __future__ import annotations

import json

import pytest

from loraserve import LLM, SamplingParams
from loraserve.errors import UnsupportedModelError
from loraserve.testing import ARCHITECTURES

PROMPTS = ["hello world", "the quick brown fox jumps over the lazy dog", "select", "a b c d e f"]
MAX_TOKENS = 16


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_matches_transformers(arch, model_dirs, hf_greedy):
    llm = LLM(str(model_dirs[arch]))
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True))
    for prompt, output in zip(PROMPTS, outputs):
        assert output.prompt == prompt
        assert output.outputs[0].token_ids == hf_greedy(model_dirs[arch], prompt, MAX_TOKENS)
        assert output.outputs[0].finish_reason == "length"


def test_prompt_token_ids_input(llama_dir):
    llm = LLM(str(llama_dir))
    ids = llm.get_tokenizer().encode("hello world")
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    by_text = llm.generate("hello world", params)[0]
    by_ids = llm.generate({"prompt_token_ids": ids}, params)[0]
    assert by_ids.outputs[0].token_ids == by_text.outputs[0].token_ids


def test_unsupported_architecture_is_refused_with_supported_list(llama_dir, tmp_path):
    for item in llama_dir.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*supported: LlamaForCausalLM"):
        LLM(str(tmp_path))


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(UnsupportedModelError, match="config.json is missing"):
        LLM(str(tmp_path))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs(llama_dir, dtype):
    llm = LLM(str(llama_dir), dtype=dtype)
    out = llm.generate("hello", SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4
