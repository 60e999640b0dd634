"""vLLM's min_p, bad_words, skip_special_tokens and truncate_prompt_tokens, checked against
transformers (MinPLogitsWarper, generate's bad_words_ids, the tokenizer's decode)."""

from __future__ import annotations

import pytest
import torch

from loraserve import LLM, SamplingParams
from loraserve.engine.sampler import apply_min_p
from loraserve.errors import InvalidRequestError

PROMPT_IDS = [1, 331, 358, 289, 212, 40, 77]


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), seed=5)


@pytest.fixture(scope="module")
def hf_tokenizer(llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(llama_dir))


def greedy(llm, prompt_ids=PROMPT_IDS, max_tokens=12, **fields):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **fields)
    return llm.generate({"prompt_token_ids": prompt_ids}, params, use_tqdm=False)[0]


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3, 0.9, 1.0])
def test_min_p_matches_transformers_warper(min_p):
    from transformers import MinPLogitsWarper

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 384, generator=generator) * 3  # [batch, vocab]
    logits[2, :5] = 9.0  # ties at the top
    temperature = 0.7
    ours = apply_min_p(logits / temperature, min_p)
    reference = MinPLogitsWarper(min_p)(torch.zeros(6, 1, dtype=torch.long), logits / temperature)
    assert torch.equal(torch.isinf(ours), torch.isinf(reference))
    kept = ~torch.isinf(ours)
    assert torch.equal(ours[kept], reference[kept])


def test_min_p_one_keeps_only_the_likeliest_token(llm):
    sampled = llm.generate({"prompt_token_ids": PROMPT_IDS},
                           SamplingParams(temperature=1.5, min_p=1.0, max_tokens=12, seed=3,
                                          ignore_eos=True), use_tqdm=False)[0]
    assert sampled.outputs[0].token_ids == greedy(llm).outputs[0].token_ids


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_min_p_outside_zero_one_is_refused(value):
    with pytest.raises(InvalidRequestError, match="min_p"):
        SamplingParams(min_p=value)


def _contains(ids: list[int], word: list[int]) -> bool:
    return any(ids[i : i + len(word)] == word for i in range(len(ids) - len(word) + 1))


def test_bad_words_match_transformers_bad_words_ids(llm, hf, hf_tokenizer):
    plain = greedy(llm, max_tokens=16)
    text = hf_tokenizer.decode(plain.outputs[0].token_ids)
    words = [w for w in text.split() if w.isprintable()][:3]
    assert words, text
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, bad_words=words)
    ours = llm.generate({"prompt_token_ids": PROMPT_IDS}, params, use_tqdm=False)[0].outputs[0]
    banned = params.bad_words_token_ids
    expected = []
    for word in words:  # vLLM's rule: the word, and " word" if it is a distinct same-length word
        alone = hf_tokenizer.encode(word, add_special_tokens=False)
        spaced = hf_tokenizer.encode(" " + word, add_special_tokens=False)
        expected += [alone] + ([spaced] if spaced[0] != alone[0] and len(spaced) == len(alone) else [])
    assert banned == expected
    assert not any(_contains(ours.token_ids, word) for word in banned)
    assert ours.token_ids != plain.outputs[0].token_ids
    # transformers checks the prompt too; vLLM only the output: keep the two comparable
    assert not any(PROMPT_IDS[-len(w) + 1 :] == w[:-1] for w in banned if len(w) > 1)
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        reference = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                max_new_tokens=16, do_sample=False, eos_token_id=None,
                                pad_token_id=0, bad_words_ids=banned)
    assert ours.token_ids == reference[0, len(PROMPT_IDS):].tolist()


def test_blank_bad_words_are_refused():
    with pytest.raises(InvalidRequestError, match="bad_words must be non-empty"):
        SamplingParams(bad_words=["  "])


@pytest.mark.parametrize("skip", [True, False])
def test_skip_special_tokens_decides_whether_special_tokens_are_text(llm, hf_tokenizer, skip):
    special = hf_tokenizer.bos_token_id
    out = greedy(llm, max_tokens=4, logit_bias={special: 100.0},
                 skip_special_tokens=skip).outputs[0]
    assert out.token_ids == [special] * 4
    assert out.text == hf_tokenizer.decode(out.token_ids, skip_special_tokens=skip)
    assert (hf_tokenizer.bos_token in out.text) is (not skip)


def test_truncate_prompt_tokens_keeps_the_last_tokens(llm):
    out = greedy(llm, truncate_prompt_tokens=3)
    assert out.prompt_token_ids == PROMPT_IDS[-3:]
    assert out.outputs[0].token_ids == greedy(llm, prompt_ids=PROMPT_IDS[-3:]).outputs[0].token_ids
    assert greedy(llm, truncate_prompt_tokens=-1).prompt_token_ids == PROMPT_IDS  # the context
    assert greedy(llm, truncate_prompt_tokens=50).prompt_token_ids == PROMPT_IDS


@pytest.mark.parametrize("value", [0, -2])
def test_truncate_prompt_tokens_must_be_positive_or_minus_one(value):
    with pytest.raises(InvalidRequestError, match="truncate_prompt_tokens must be an integer >= 1 or -1"):
        SamplingParams(truncate_prompt_tokens=value)
