"""Each adapter against HF + PEFT, and a mixed batch against each row served alone."""

from __future__ import annotations

import pytest

from loraserve import LLM, SamplingParams
from loraserve.lora.request import LoRARequest
from loraserve.testing import make_adapter, make_tiny_model

PROMPT = "many adapters share one base model"
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def request(name, path, lora_id=1):
    return LoRARequest(name, lora_id, str(path))


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), enable_lora=True, max_loras=4, max_lora_rank=16)


@pytest.mark.parametrize("name", ["sql", "chat", "mlp", "bin"])
def test_adapter_matches_peft(llm, llama_dir, adapter_dirs, hf_greedy, name):
    out = llm.generate(PROMPT, GREEDY, lora_request=request(name, adapter_dirs[name]))[0]
    assert out.outputs[0].token_ids == hf_greedy(llama_dir, PROMPT, 12, adapter_dirs[name])


def test_adapters_change_the_output(llm, adapter_dirs):
    base = llm.generate(PROMPT, GREEDY)[0].outputs[0].token_ids
    for name in ("sql", "chat", "mlp"):
        tuned = llm.generate(PROMPT, GREEDY, lora_request=request(name, adapter_dirs[name]))[0]
        assert tuned.outputs[0].token_ids != base


def test_mixed_batch_equals_each_row_alone(llm, adapter_dirs):
    prompts = ["hello world", "select name from users", "the quick brown fox", "a b c", "one more"]
    loras = [
        None,
        request("sql", adapter_dirs["sql"]),
        request("chat", adapter_dirs["chat"], 2),
        request("mlp", adapter_dirs["mlp"], 3),
        None,
    ]
    mixed = llm.generate(prompts, GREEDY, lora_request=loras)
    for prompt, lora, out in zip(prompts, loras, mixed):
        alone = llm.generate(prompt, GREEDY, lora_request=lora)[0]
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_rows_without_an_adapter_in_a_mixed_batch_get_none(llama_dir, adapter_dirs, dtype):
    """Base rows beside adapter rows in one step run on the base weights alone (vLLM 0.32's
    CPU path gave them the last slot's adapter): the same prompts all without an adapter, in
    the same batch shape, give those rows the same tokens, and the adapter rows differ."""
    llm = LLM(str(llama_dir), enable_lora=True, max_loras=4, max_lora_rank=16, dtype=dtype)
    prompts = ["hello world", "select name from users", "the quick brown fox", "a b c", "one more"]
    loras = [None, request("sql", adapter_dirs["sql"]), None,
             request("chat", adapter_dirs["chat"], 2), request("mlp", adapter_dirs["mlp"], 3)]
    mixed = [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY, lora_request=loras)]
    base = [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)]
    for row, lora in enumerate(loras):
        if lora is None:
            assert mixed[row] == base[row], f"row {row} has no adapter but its output changed"
        else:
            assert mixed[row] != base[row], f"row {row}'s adapter {lora.lora_name} changed nothing"


def test_more_adapters_than_slots_all_complete_correctly(llama_dir, adapter_dirs):
    llm = LLM(str(llama_dir), enable_lora=True, max_loras=1, max_cpu_loras=2, max_lora_rank=16)
    steps = []
    run = llm.engine.runner.run

    def spy(step):
        steps.append({s.lora_name for s in step.seqs if s.lora is not None})
        return run(step)

    llm.engine.runner.run = spy
    names = ["sql", "chat", "mlp", "bin", "sql", "chat"]
    loras = [request(n, adapter_dirs[n], i + 1) for i, n in enumerate(names)]
    outs = llm.generate(["hello"] * len(names), GREEDY, lora_request=loras)
    assert all(len(adapters) <= 1 for adapters in steps)
    reference = LLM(str(llama_dir), enable_lora=True, max_loras=4, max_lora_rank=16)
    for lora, out in zip(loras, outs):
        expected = reference.generate("hello", GREEDY, lora_request=lora)[0]
        assert out.outputs[0].token_ids == expected.outputs[0].token_ids
    assert llm.engine.lora_manager.num_host_adapters <= 2


def test_rank_and_alpha_patterns_match_peft(llama_dir, tmp_path, hf_greedy):
    path = make_adapter(
        llama_dir, tmp_path / "pattern", rank=4, alpha=8, seed=21,
        rank_pattern={"q_proj": 8}, alpha_pattern={"v_proj": 32},
    )
    llm = LLM(str(llama_dir), enable_lora=True, max_lora_rank=8)
    out = llm.generate(PROMPT, GREEDY, lora_request=request("pattern", path))[0]
    assert out.outputs[0].token_ids == hf_greedy(llama_dir, PROMPT, 12, path)


def test_alpha_pattern_alternatives_match_peft(llama_dir, tmp_path, hf_greedy):
    """PEFT matches a pattern key as a whole regex group, so "q_proj|v_proj" covers both."""
    path = make_adapter(
        llama_dir, tmp_path / "alternatives", rank=4, alpha=4, seed=22,
        alpha_pattern={"q_proj|v_proj": 40},
    )
    llm = LLM(str(llama_dir), enable_lora=True, max_lora_rank=4)
    out = llm.generate(PROMPT, GREEDY, lora_request=request("alternatives", path))[0]
    assert out.outputs[0].token_ids == hf_greedy(llama_dir, PROMPT, 12, path)


def test_all_linear_adapter_matches_peft(llama_dir, tmp_path, hf_greedy):
    """target_modules="all-linear" is saved as full module paths, one per layer."""
    path = make_adapter(llama_dir, tmp_path / "all_linear", rank=4, seed=23, targets="all-linear")
    llm = LLM(str(llama_dir), enable_lora=True, max_lora_rank=4)
    out = llm.generate(PROMPT, GREEDY, lora_request=request("all_linear", path))[0]
    assert out.outputs[0].token_ids == hf_greedy(llama_dir, PROMPT, 12, path)


def test_batch_of_distinct_adapters_without_gqa_matches_peft(tmp_path, hf_greedy):
    """Without GQA q/k/v is one B stack: each decode step expands every row's q, k and v
    with one in-place batched matmul (the benchmark's shape), checked row by row."""
    model = make_tiny_model(tmp_path / "mha", seed=5, num_key_value_heads=4)
    adapters = [make_adapter(model, tmp_path / f"a{i}", rank=8, seed=20 + i) for i in range(3)]
    llm = LLM(str(model), enable_lora=True, max_loras=3, max_lora_rank=8)
    loras = [request(f"a{i}", path, i + 1) for i, path in enumerate(adapters)]
    outs = llm.generate([PROMPT] * 3, GREEDY, lora_request=loras)
    for out, path in zip(outs, adapters, strict=True):
        assert out.outputs[0].token_ids == hf_greedy(model, PROMPT, 12, path)
