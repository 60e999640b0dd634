"""LLM(...) keywords: vLLM-only engine options are accepted with a warning; anything else is
a TypeError that suggests the option meant, before the model loads."""

from __future__ import annotations

import logging

import pytest

from loraserve import LLM, SamplingParams


def test_vllm_only_options_are_accepted_with_a_warning(llama_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="loraserve.entrypoints.llm"):
        llm = LLM(str(llama_dir), gpu_memory_utilization=0.8, tensor_parallel_size=1,
                  cuda_graph_sizes=[8])
    assert "cuda_graph_sizes, gpu_memory_utilization, tensor_parallel_size" in caplog.text
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


def test_implemented_vllm_options_take_effect(llama_dir, tmp_path, caplog):
    """generation_config (a directory), max_logprobs, a token budget smaller than the prompts,
    and lora_dtype, which loraserve warns about rather than use."""
    import json

    from loraserve.errors import InvalidRequestError

    folder = tmp_path / "generation"
    folder.mkdir()
    (folder / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.0, "top_k": 5, "max_new_tokens": 3, "min_p": 0.1}))
    with caplog.at_level(logging.WARNING):
        llm = LLM(str(llama_dir), generation_config=str(folder), max_logprobs=2,
                  max_num_batched_tokens=8, lora_dtype="bfloat16")
    assert "ignoring lora_dtype 'bfloat16': adapters run in the model's dtype (float32)" in caplog.text
    defaults = llm.get_default_sampling_params()
    assert (defaults.temperature, defaults.top_k, defaults.min_p, defaults.max_tokens) == (
        0.0, 5, 0.1, 3)
    long_prompt = "the quick brown fox jumps over the lazy dog " * 3  # longer than the budget
    outputs = llm.generate([long_prompt, "hello", "select name"])  # the defaults: greedy, 3
    assert [len(o.outputs[0].token_ids) for o in outputs] == [3, 3, 3]
    greedy = llm.generate(long_prompt, SamplingParams(temperature=0, max_tokens=3))
    assert outputs[0].outputs[0].token_ids == greedy[0].outputs[0].token_ids
    assert llm.generate("hi", SamplingParams(max_tokens=1, logprobs=2))[0].outputs[0].logprobs
    with pytest.raises(InvalidRequestError, match="Requested sample logprobs of 3, which is "
                                                  "greater than max allowed: 2"):
        llm.generate("hi", SamplingParams(max_tokens=1, logprobs=3))
    with pytest.raises(InvalidRequestError, match="Requested prompt logprobs of 3"):
        llm.generate("hi", SamplingParams(max_tokens=1, prompt_logprobs=3))


@pytest.mark.parametrize("choice, override, expected", [
    ("auto", None, {"temperature": 0.6, "top_p": 0.9, "max_tokens": 64}),
    ("vllm", None, {}),
    ("vllm", {"max_new_tokens": 5, "top_k": 3}, {"top_k": 3, "max_tokens": 5}),
    ("auto", {"temperature": 0.1}, {"temperature": 0.1, "top_p": 0.9, "max_tokens": 64}),
])
def test_generation_config_choices(choice, override, expected):
    from loraserve.config import EngineConfig
    from loraserve.engine.generation_defaults import sampling_defaults

    model_file = {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 64, "do_sample": True,
                  "eos_token_id": 2}
    config = EngineConfig("/m", generation_config=choice, override_generation_config=override)
    assert sampling_defaults(config, model_file) == expected


def test_bad_generation_config_is_refused(tmp_path):
    from loraserve.config import EngineConfig
    from loraserve.engine.generation_defaults import generation_config, sampling_defaults
    from loraserve.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="directory holding generation_config.json"):
        generation_config(EngineConfig("/m", generation_config=str(tmp_path)), {})
    with pytest.raises(InvalidRequestError, match="generation config's sampling defaults"):
        sampling_defaults(EngineConfig("/m"), {"temperature": -1})


def test_server_requests_get_the_defaults_they_leave_out():
    from loraserve.engine.admission import ContextLimit
    from loraserve.entrypoints.openai.prompts import sampling_params
    from loraserve.entrypoints.openai.protocol import (
        ChatCompletionRequest,
        CompletionRequest,
        RequestDefaults,
    )

    defaults = RequestDefaults(20, {"temperature": 0.2, "top_k": 4, "max_tokens": 8})
    left_out = CompletionRequest.parse({"prompt": "x"}, defaults).sampling
    assert (left_out.temperature, left_out.top_k, left_out.top_p) == (0.2, 4, 1.0)
    given = CompletionRequest.parse({"prompt": "x", "temperature": 1, "max_tokens": 30}, defaults)
    assert given.sampling.temperature == 1.0
    context = ContextLimit(100)
    assert sampling_params(given.sampling, 10, context).max_tokens == 8  # capped, as vLLM
    chat = ChatCompletionRequest.parse({"messages": [{"role": "user", "content": "x"}]}, defaults)
    assert sampling_params(chat.sampling, 95, context).max_tokens == 5  # the room left
    assert sampling_params(chat.sampling, 10, context).max_tokens == 8
