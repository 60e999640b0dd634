"""LLM(...) keywords: vLLM-only engine options are accepted with a warning; anything else is
a TypeError that suggests the option meant, before the model loads."""

from __future__ import annotations

import logging

import pytest

from loraserve import LLM, SamplingParams


def test_vllm_only_options_are_accepted_with_a_warning(llama_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="loraserve.entrypoints.llm"):
        llm = LLM(str(llama_dir), gpu_memory_utilization=0.8, tensor_parallel_size=1,
                  enforce_eager=True)
    assert "enforce_eager, gpu_memory_utilization, tensor_parallel_size" in caplog.text
    assert llm.generate("hi", SamplingParams(max_tokens=2))[0].outputs[0].token_ids


@pytest.mark.parametrize("kwargs, message", [
    ({"max_lora": 4}, "'max_lora' (did you mean 'max_loras'?)"),
    ({"enable_loras": True}, "'enable_loras' (did you mean 'enable_lora'?)"),
    ({"zzz": 1}, "unexpected keyword argument(s): 'zzz'"),
])
def test_unknown_options_are_a_type_error_with_a_hint(tmp_path, kwargs, message):
    with pytest.raises(TypeError) as info:
        LLM(str(tmp_path / "no-model-needed"), **kwargs)
    assert message in str(info.value)
