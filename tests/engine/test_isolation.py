"""One sequence never harms another: bad values are refused before they run, and whatever
fails for one row of a step ends that sequence alone with finish_reason "error"."""

from __future__ import annotations

import math

import pytest
import torch

from loraserve import LLM, SamplingParams
from loraserve.engine import model_runner, sampler
from loraserve.errors import InvalidRequestError
from loraserve.lora.request import LoRARequest


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), enable_lora=True, max_loras=2, max_lora_rank=16, max_num_seqs=16)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", 1e300),  # inf in float32, where the sampler divides by it
        ("top_p", math.nan),
        ("top_p", 1e-300),  # 0 in float32
        ("repetition_penalty", math.nan),
        ("repetition_penalty", 1e308),
        ("presence_penalty", math.nan),
        ("frequency_penalty", -math.inf),
        ("seed", 2**63),
        ("seed", -(2**63) - 1),
    ],
)
def test_values_the_sampler_cannot_run_are_refused(field, value):
    with pytest.raises(InvalidRequestError, match=field):
        SamplingParams(**{field: value})


def test_non_finite_logit_bias_is_refused():
    with pytest.raises(InvalidRequestError, match="logit_bias"):
        SamplingParams(logit_bias={3: math.nan})


def test_stop_token_ids_outside_the_vocabulary_are_refused(llm):
    vocab = llm.engine.spec.vocab_size
    params = SamplingParams(max_tokens=4, min_tokens=2, stop_token_ids=[vocab + 5])
    with pytest.raises(InvalidRequestError, match=r"stop_token_ids names token ids outside"):
        llm.generate("hello", params)
    assert not llm.engine.has_unfinished_requests()


def test_the_largest_seed_runs():
    params = SamplingParams(seed=2**63 - 1, n=3, max_tokens=2)
    assert params.seed == 2**63 - 1


def _mixed_batch(adapter_dirs):
    """Base and adapter rows, greedy and seeded sampling, penalties and logprobs, in one step."""
    sql = LoRARequest("sql", 1, str(adapter_dirs["sql"]))
    mlp = LoRARequest("mlp", 2, str(adapter_dirs["mlp"]))
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=2)
    sampled = SamplingParams(temperature=0.9, top_p=0.9, seed=7, max_tokens=8, ignore_eos=True,
                             repetition_penalty=1.3, presence_penalty=0.5)
    prompts = ["hello there", "the poison row", "select name", "many adapters", "last one"]
    params = [greedy, sampled, sampled, greedy, sampled]
    loras = [None, sql, mlp, sql, None]
    return prompts, params, loras


def _run(llm, prompts, params, loras):
    return [llm.generate([p], s, lora_request=[lo])[0] for p, s, lo in zip(prompts, params, loras)]


def _batch(llm, prompts, params, loras):
    """All prompts in one call, so they share steps (the poison row among them)."""
    engine = llm.engine
    for i, (prompt, p, lora) in enumerate(zip(prompts, params, loras)):
        ids = engine.tokenizer.encode(prompt)
        engine.add_request(f"iso-{i}", ids, p, lora_request=lora, prompt=prompt)
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    return [done[f"iso-{i}"] for i in range(len(prompts))]


def _tokens(outputs):
    return [out.outputs[0].token_ids for out in outputs]


@pytest.fixture
def poison_row(monkeypatch):
    """Make every step raise for the sequences whose prompt is the poison row's, at ``where``."""
    def poison(llm, where: str):
        target = llm.engine.tokenizer.encode("the poison row")

        def is_poisoned(seq) -> bool:
            return seq.prompt_token_ids == target

        if where == "processor":
            real = sampler.process_row

            def process_row(logits, seq, eos):
                if is_poisoned(seq):
                    raise RuntimeError("injected processor failure")
                return real(logits, seq, eos)

            monkeypatch.setattr(sampler, "process_row", process_row)
        elif where == "draw":
            real_draw = sampler._sample_row

            def draw(logits, seq):
                if is_poisoned(seq):
                    raise RuntimeError("injected sampling failure")
                return real_draw(logits, seq)

            monkeypatch.setattr(sampler, "_sample_row", draw)
        else:  # NaN logits, as an adapter with NaN weights or an overflow would give
            real_run = model_runner.ModelRunner.run

            def run(self, step):
                logits = real_run(self, step)
                with torch.inference_mode():
                    for row, seq in enumerate(step.seqs):
                        if is_poisoned(seq):
                            logits.next_token[row, 3] = torch.nan
                return logits

            monkeypatch.setattr(model_runner.ModelRunner, "run", run)

    return poison


@pytest.mark.parametrize("where", ["processor", "draw", "logits"])
def test_a_failing_row_ends_alone_and_the_others_are_unchanged(
    llm, adapter_dirs, poison_row, where
):
    prompts, params, loras = _mixed_batch(adapter_dirs)
    expected = _tokens(_run(llm, prompts, params, loras))
    poison_row(llm, where)
    outputs = _batch(llm, prompts, params, loras)
    poisoned = outputs[1].outputs[0]
    assert poisoned.finish_reason == "error"
    assert poisoned.error and ("injected" in poisoned.error or "non-finite" in poisoned.error)
    others = [i for i in range(len(prompts)) if i != 1]
    assert [_tokens(outputs)[i] for i in others] == [expected[i] for i in others]
    assert all(outputs[i].outputs[0].finish_reason == "length" for i in others)
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.lora_manager.num_pinned_host_adapters == 0
    assert llm.engine.scheduler.blocks.num_free == llm.engine.scheduler.blocks.num_blocks
