"""Steps one adapter owns alone run on merged weights: same tokens as PEFT, never stale."""

from __future__ import annotations

import pytest

from loraserve import LLM, SamplingParams, metrics
from loraserve.kernels import LoRABatch
from loraserve.lora.merge import MERGE_AFTER_STEPS
from loraserve.lora.request import LoRARequest
from loraserve.testing import ALL_TARGETS, ARCHITECTURES, make_adapter

PROMPT = "many adapters share one base model"
LONG = MERGE_AFTER_STEPS + 12  # a generation that runs its last steps merged


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def request(name, path, lora_id=1):
    return LoRARequest(name, lora_id, str(path))


def merger(llm: LLM):
    return llm.engine.runner.merger


def count_merged_steps(llm: LLM) -> list[int]:
    """Spy on the merger: a list that grows by one for every step run on merged weights."""
    merged_steps: list[int] = []
    weights_for = merger(llm).weights_for

    def spy(batch):
        weights = weights_for(batch)
        if weights is not None:
            merged_steps.append(1)
        return weights

    merger(llm).weights_for = spy
    return merged_steps


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), enable_lora=True, max_loras=4, max_lora_rank=16)


@pytest.fixture(scope="module")
def unmerged(llama_dir):
    return LLM(str(llama_dir), enable_lora=True, max_loras=4, max_lora_rank=16, lora_merge=False)


@pytest.mark.parametrize("name", ["sql", "chat", "mlp", "bin"])
def test_merged_steps_match_peft(llama_dir, adapter_dirs, hf_greedy, name):
    llm = LLM(str(llama_dir), enable_lora=True, max_loras=4, max_lora_rank=16)
    merged_steps = count_merged_steps(llm)
    out = llm.generate(PROMPT, greedy(LONG), lora_request=request(name, adapter_dirs[name]))[0]
    assert len(merged_steps) == LONG - MERGE_AFTER_STEPS + 1
    assert out.outputs[0].token_ids == hf_greedy(llama_dir, PROMPT, LONG, adapter_dirs[name])


def sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


def test_merging_waits_for_a_run_of_steps(llama_dir, adapter_dirs):
    llm = LLM(str(llama_dir), enable_lora=True, max_loras=4, max_lora_rank=16)
    chat = request("chat", adapter_dirs["chat"])
    merges, steps = sample("loraserve_lora_merge_seconds_count"), sample("loraserve_lora_merged_steps_total")
    llm.generate(PROMPT, greedy(MERGE_AFTER_STEPS - 1), lora_request=chat)
    llm.generate(PROMPT, greedy(1))  # a base step breaks the run
    llm.generate(PROMPT, greedy(MERGE_AFTER_STEPS - 1), lora_request=chat)
    assert merger(llm).merged_slot is None
    llm.generate(PROMPT, greedy(1), lora_request=chat)  # the run goes on across calls
    assert merger(llm).merged_slot is not None
    num_layers = len(llm.engine.model.weights.layers)
    assert num_layers > 1 and sample("loraserve_lora_merge_seconds_count") == merges
    llm.generate(PROMPT, greedy(num_layers - 1), lora_request=chat)  # a layer a step
    assert sample("loraserve_lora_merge_seconds_count") == merges + 1
    assert sample("loraserve_lora_merged_steps_total") == steps + num_layers


@pytest.mark.parametrize("others", [[None], [None, "sql"], ["sql"]])
def test_mixed_batches_after_a_merge_use_the_lora_path(llm, unmerged, adapter_dirs, others):
    chat = request("chat", adapter_dirs["chat"])
    llm.generate(PROMPT, greedy(LONG), lora_request=chat)
    assert merger(llm).merged_slot is not None
    loras = [chat] + [name and request(name, adapter_dirs[name], 2) for name in others]
    prompts = ["hello world", "select name from users", "the quick brown fox"][: len(loras)]
    got = llm.generate(prompts, greedy(LONG), lora_request=loras)
    expected = unmerged.generate(prompts, greedy(LONG), lora_request=loras)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]


def test_a_rewritten_slot_never_runs_on_the_old_merge(llama_dir, adapter_dirs, hf_greedy):
    llm = LLM(str(llama_dir), enable_lora=True, max_loras=1, max_cpu_loras=2, max_lora_rank=16)
    llm.generate(PROMPT, greedy(LONG), lora_request=request("chat", adapter_dirs["chat"]))
    assert merger(llm).merged_slot == 0
    # sql now takes slot 0; too few steps to earn a merge of its own
    out = llm.generate(PROMPT, greedy(4), lora_request=request("sql", adapter_dirs["sql"], 2))[0]
    assert out.outputs[0].token_ids == hf_greedy(llama_dir, PROMPT, 4, adapter_dirs["sql"])
    assert merger(llm).merged_slot is None


def test_untargeted_projections_are_shared_not_copied(llm, adapter_dirs):
    llm.generate(PROMPT, greedy(LONG), lora_request=request("sql", adapter_dirs["sql"], 2))
    base = llm.engine.model.weights.layers
    merged, lora = merger(llm).weights_for(LoRABatch.build([merger(llm).merged_slot]))
    assert lora is None  # every layer merged: no LoRA path left
    assert all(m.o is b.o and m.gate_up is b.gate_up and m.down is b.down for m, b in zip(merged, base))
    assert all(m.qkv is not b.qkv for m, b in zip(merged, base))


def test_off_switch_and_non_float32_weights_never_merge(llama_dir, unmerged):
    assert merger(unmerged) is None
    bf16 = LLM(str(llama_dir), enable_lora=True, dtype="bfloat16")
    assert merger(bf16) is None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_with_an_adapter_matches_peft(arch, model_dirs, tmp_path, hf_greedy):
    adapter = make_adapter(model_dirs[arch], tmp_path / arch, rank=8, targets=ALL_TARGETS, seed=5)
    llm = LLM(str(model_dirs[arch]), enable_lora=True, max_lora_rank=8)
    merged_steps = count_merged_steps(llm)
    out = llm.generate(PROMPT, greedy(LONG), lora_request=request("all", adapter))[0]
    assert merged_steps  # the LoRA path first, then merged weights
    assert out.outputs[0].token_ids == hf_greedy(model_dirs[arch], PROMPT, LONG, adapter)
