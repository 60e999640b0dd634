"""Logprobs of generated tokens against transformers' raw logits, in vLLM's shapes."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from loraserve import LLM, SamplingParams
from loraserve.logprobs import Logprob
from loraserve.lora.request import LoRARequest


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir))


def hf_logprobs(hf, prompt_ids, new_ids):
    """[steps, vocab] log-softmax of the model's raw next-token logits along prompt + new_ids."""
    ids = torch.tensor([prompt_ids + new_ids])
    with torch.no_grad():
        logits = hf(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
    return logits.float().log_softmax(-1)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=5),
    # sampled, penalized and biased: logprobs still describe the raw model (vLLM's default)
    SamplingParams(temperature=1.3, top_k=20, seed=5, max_tokens=10, ignore_eos=True, logprobs=3,
                   repetition_penalty=1.5, logit_bias={9: 2.0}),
])
def test_logprobs_are_the_raw_model_distribution(llm, hf, params):
    out = llm.generate("hello world", params)[0]
    comp = out.outputs[0]
    reference = hf_logprobs(hf, out.prompt_token_ids, comp.token_ids)
    tokenizer = llm.get_tokenizer()
    assert len(comp.logprobs) == len(comp.token_ids)
    total = 0.0
    for step, (token, entries) in enumerate(zip(comp.token_ids, comp.logprobs)):
        row = reference[step]
        assert next(iter(entries)) == token  # the sampled token comes first, as in vLLM
        top_values, top_ids = row.topk(params.logprobs)
        assert set(entries) == {token, *top_ids.tolist()}
        for token_id, entry in entries.items():
            assert isinstance(entry, Logprob)
            assert entry.logprob == pytest.approx(row[token_id].item(), abs=1e-4)
            assert entry.rank == int((row > row[token_id]).sum()) + 1
            assert entry.decoded_token == tokenizer.decode([token_id], skip_special_tokens=False)
        total += entries[token].logprob
    assert comp.cumulative_logprob == pytest.approx(total, abs=1e-4)
    assert math.isclose(sum(row[t].item() for row, t in zip(reference, comp.token_ids)), total, abs_tol=1e-3)


def test_logprobs_zero_gives_only_the_sampled_token(llm):
    comp = llm.generate("hi", SamplingParams(temperature=0, max_tokens=4, ignore_eos=True,
                                             logprobs=0))[0].outputs[0]
    assert [list(entries) for entries in comp.logprobs] == [[t] for t in comp.token_ids]
    assert all(entries[t].rank == 1 for t, entries in zip(comp.token_ids, comp.logprobs))  # greedy


def test_no_logprobs_unless_asked(llm):
    comp = llm.generate("hi", SamplingParams(temperature=0, max_tokens=4))[0].outputs[0]
    assert comp.logprobs is None and comp.cumulative_logprob is None


def test_logprobs_do_not_change_the_tokens(llm):
    prompts = ["hello world", "a b c", "the cat"]
    plain = SamplingParams(temperature=0.9, seed=3, max_tokens=12, ignore_eos=True)
    with_logprobs = SamplingParams(temperature=0.9, seed=3, max_tokens=12, ignore_eos=True, logprobs=2)
    mixed = llm.generate(prompts, [plain, with_logprobs, plain])
    alone = llm.generate(prompts, plain)
    assert [o.outputs[0].token_ids for o in mixed] == [o.outputs[0].token_ids for o in alone]
    assert mixed[0].outputs[0].logprobs is None and mixed[1].outputs[0].logprobs is not None


def _check_prompt_logprobs(out, reference_model, top):
    prompt = out.prompt_token_ids
    with torch.no_grad():
        rows = reference_model(input_ids=torch.tensor([prompt])).logits[0, :-1].float().log_softmax(-1)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for row, token, entries in zip(rows, prompt[1:], out.prompt_logprobs[1:]):
        assert next(iter(entries)) == token
        assert set(entries) == {token, *row.topk(top).indices.tolist()}
        for token_id, entry in entries.items():
            assert entry.logprob == pytest.approx(row[token_id].item(), abs=1e-4)
            assert entry.rank == int((row > row[token_id]).sum()) + 1


def test_prompt_logprobs_match_transformers_in_a_mixed_batch(llm, hf):
    prompts = ["hello world how are you today", "a b", "the cat sat on the mat"]
    scored = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=4, n=2)
    plain = SamplingParams(temperature=0, max_tokens=3)
    outs = llm.generate(prompts, [scored, plain, scored])
    _check_prompt_logprobs(outs[0], hf, 4)
    _check_prompt_logprobs(outs[2], hf, 4)
    assert outs[1].prompt_logprobs is None
    # scoring the prompt changes nothing about what is generated
    assert [c.token_ids for c in outs[0].outputs] == [c.token_ids for c in
                                                       llm.generate(prompts[0], plain)[0].outputs] * 2


def test_prompt_logprobs_with_an_adapter_match_peft(llama_dir, adapter_dirs):
    from peft import PeftModel

    llm = LLM(str(llama_dir), enable_lora=True, max_lora_rank=16)
    lora = LoRARequest("chat", 1, str(adapter_dirs["chat"]))
    out = llm.generate("the quick brown fox jumps", SamplingParams(max_tokens=1, prompt_logprobs=2),
                       lora_request=lora)[0]
    base = AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32)
    _check_prompt_logprobs(out, PeftModel.from_pretrained(base, str(adapter_dirs["chat"])).eval(), 2)
