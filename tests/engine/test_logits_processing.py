"""Penalties, logit bias and min_tokens against transformers' generate with the same rules.

Repetition penalty, sequence bias and min_new_tokens are transformers' own processors; the
presence and frequency penalties are OpenAI's documented formula, run inside HF generate.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from loraserve import LLM, SamplingParams
from loraserve.errors import InvalidRequestError

PROMPTS = ["hello world", "the cat sat on", "a b c"]
NEW = 24


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir))


class OpenAIPenalties(LogitsProcessor):
    """mu[j] -= c[j] * frequency + (c[j] > 0) * presence, c counting generated tokens only."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        counts = torch.zeros_like(scores)
        generated = input_ids[:, self.prompt_len :]
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


def hf_tokens(hf, llm, prompt, eos_token_id=None, processors=(), **kwargs):
    ids = torch.tensor([llm.get_tokenizer().encode(prompt)])
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            max_new_tokens=kwargs.pop("max_new_tokens", NEW), eos_token_id=eos_token_id,
            pad_token_id=0, logits_processor=LogitsProcessorList(processors), **kwargs,
        )
    return out[0, ids.shape[1] :].tolist()


def engine_tokens(llm, prompt, **kwargs):
    params = SamplingParams(temperature=0, max_tokens=kwargs.pop("max_tokens", NEW), **kwargs)
    return llm.generate(prompt, params)[0].outputs[0].token_ids


@pytest.mark.parametrize("prompt", PROMPTS)
def test_repetition_penalty_matches_transformers(llm, hf, prompt):
    plain = engine_tokens(llm, prompt, ignore_eos=True)
    penalized = engine_tokens(llm, prompt, ignore_eos=True, repetition_penalty=1.8)
    assert penalized == hf_tokens(hf, llm, prompt, repetition_penalty=1.8)
    assert len(set(penalized)) > len(set(plain))  # the penalty did something here


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.0, 0.7), (-0.5, 1.2)])
def test_presence_and_frequency_penalties_match_openai_formula(llm, hf, prompt, presence, frequency):
    prompt_len = len(llm.get_tokenizer().encode(prompt))
    expected = hf_tokens(hf, llm, prompt, processors=[OpenAIPenalties(prompt_len, presence, frequency)])
    got = engine_tokens(llm, prompt, ignore_eos=True, presence_penalty=presence,
                        frequency_penalty=frequency)
    assert got == expected and got != engine_tokens(llm, prompt, ignore_eos=True)


def test_all_penalties_together_in_vllm_order(llm, hf):
    prompt = PROMPTS[1]
    prompt_len = len(llm.get_tokenizer().encode(prompt))
    # transformers runs its repetition processor before processors passed in: vLLM's order too
    expected = hf_tokens(hf, llm, prompt, repetition_penalty=1.3,
                         processors=[OpenAIPenalties(prompt_len, 0.4, 0.6)])
    got = engine_tokens(llm, prompt, ignore_eos=True, repetition_penalty=1.3,
                        presence_penalty=0.4, frequency_penalty=0.6)
    assert got == expected


def test_logit_bias_matches_transformers_sequence_bias(llm, hf):
    prompt = PROMPTS[0]
    plain = engine_tokens(llm, prompt, ignore_eos=True)
    bias = {plain[0]: -4.0, plain[2]: -2.5, 7: 3.0}
    got = engine_tokens(llm, prompt, ignore_eos=True, logit_bias=bias)
    expected = hf_tokens(hf, llm, prompt, sequence_bias={(t,): b for t, b in bias.items()})
    assert got == expected and got != plain


def test_logit_bias_outside_the_vocabulary_is_refused(llm):
    vocab = llm.engine.spec.vocab_size
    with pytest.raises(InvalidRequestError, match=rf"outside the vocabulary \[0, {vocab}\): \[{vocab}\]"):
        llm.generate("hi", SamplingParams(logit_bias={vocab: 1.0, 3: 1.0}))
    assert not llm.engine.has_unfinished_requests()


def _pretend_eos(llm, prompt, at):
    """Make the greedy token at position ``at`` the model's EOS; return the greedy tokens."""
    plain = engine_tokens(llm, prompt, ignore_eos=True)
    eos = plain[at]
    assert eos not in plain[:at]
    llm.engine.eos_token_ids = frozenset({eos})
    return plain, eos


def test_min_tokens_holds_off_eos_like_min_new_tokens(llama_dir, hf):
    llm = LLM(str(llama_dir))
    prompt = PROMPTS[0]
    plain, eos = _pretend_eos(llm, prompt, at=1)
    early = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=NEW))[0].outputs[0]
    assert early.token_ids == plain[:2] and early.finish_reason == "stop"
    held = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=NEW, min_tokens=6))[0].outputs[0]
    expected = hf_tokens(hf, llm, prompt, eos_token_id=eos, min_new_tokens=6)
    assert held.token_ids == expected and len(held.token_ids) > 6
    assert eos not in held.token_ids[:6]


def test_min_tokens_holds_off_stop_token_ids(llm):
    prompt = PROMPTS[2]
    plain = engine_tokens(llm, prompt, ignore_eos=True)
    stop = plain[0]
    early = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True,
                                                stop_token_ids=[stop]))[0].outputs[0]
    assert early.token_ids == [stop] and early.stop_reason == stop
    held = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True,
                                               stop_token_ids=[stop], min_tokens=4))[0].outputs[0]
    assert len(held.token_ids) >= 4 and stop not in held.token_ids[:4]
    assert held.token_ids[0] != stop


def test_min_tokens_holds_off_stop_strings(llm):
    prompt = PROMPTS[0]
    full = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True))[0].outputs[0]
    tokenizer = llm.get_tokenizer()
    first_piece = tokenizer.decode(full.token_ids[:1]).strip()
    assert first_piece
    stopped = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True,
                                                  stop=[first_piece]))[0].outputs[0]
    assert stopped.finish_reason == "stop" and len(stopped.token_ids) == 1
    held = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True,
                                               stop=[first_piece], min_tokens=3))[0].outputs[0]
    # the stop string inside the first min_tokens tokens does not count; later ones would
    assert len(held.token_ids) > 3
    assert held.token_ids == full.token_ids[: len(held.token_ids)]
    if held.finish_reason == "stop":
        assert held.text.startswith(tokenizer.decode(full.token_ids[:3]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(presence_penalty=2.5), r"presence_penalty must be in \[-2, 2\], got 2.5"),
        (dict(frequency_penalty=-3), r"frequency_penalty must be in \[-2, 2\], got -3"),
        (dict(repetition_penalty=0), "repetition_penalty must be greater than zero, got 0"),
        (dict(min_tokens=-1), "min_tokens must be at least 0, got -1"),
        (dict(min_tokens=20, max_tokens=10), r"min_tokens \(20\) must not exceed max_tokens \(10\)"),
        (dict(logprobs=-1), "logprobs must be at least 0, got -1"),
    ],
)
def test_bad_processing_params_are_refused(kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        SamplingParams(**kwargs)
