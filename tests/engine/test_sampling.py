"""Sampling options behave like vLLM's: seeds, n, top-k/top-p, stop strings, EOS, lengths."""

from __future__ import annotations

import pytest

from loraserve import LLM, SamplingParams
from loraserve.errors import InvalidRequestError


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), seed=7)


def tokens(llm, params, prompt="hello world"):
    return [o.token_ids for o in llm.generate(prompt, params)[0].outputs]


def test_seed_makes_sampling_reproducible(llm):
    params = SamplingParams(temperature=1.0, max_tokens=12, seed=123, ignore_eos=True)
    assert tokens(llm, params) == tokens(llm, params)
    other = SamplingParams(temperature=1.0, max_tokens=12, seed=124, ignore_eos=True)
    assert tokens(llm, params) != tokens(llm, other)


def test_top_k_one_is_greedy(llm):
    greedy = tokens(llm, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    top1 = tokens(llm, SamplingParams(temperature=0.8, top_k=1, max_tokens=10, ignore_eos=True))
    assert top1 == greedy


def test_tiny_top_p_is_greedy(llm):
    greedy = tokens(llm, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    nucleus = tokens(llm, SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=10, ignore_eos=True))
    assert nucleus == greedy


def test_n_samples_differ_and_are_indexed(llm):
    outs = llm.generate("hello", SamplingParams(temperature=1.0, n=3, max_tokens=10, seed=1, ignore_eos=True))[0]
    assert [o.index for o in outs.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in outs.outputs}) > 1


def test_stop_string_is_cut_from_text(llm):
    full = llm.generate("hello", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))[0]
    text = full.outputs[0].text
    start = next(
        i for i in range(2, len(text) - 2) if text.find(text[i : i + 2]) == i and "\ufffd" not in text[i : i + 2]
    )
    stop = text[start : start + 2]
    out = llm.generate("hello", SamplingParams(temperature=0, max_tokens=16, stop=[stop], ignore_eos=True))[0]
    assert out.outputs[0].finish_reason == "stop"
    assert out.outputs[0].text == text[: text.index(stop)]


def test_eos_stops_unless_ignored(llama_dir):
    llm = LLM(str(llama_dir))
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    first = llm.generate("hello", greedy)[0].outputs[0].token_ids[0]
    llm.engine.eos_token_ids = frozenset({first})  # pretend the model's first answer is EOS
    stopped = llm.generate("hello", SamplingParams(temperature=0, max_tokens=8))[0].outputs[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids == [first] and stopped.text == ""
    ignored = llm.generate("hello", greedy)[0].outputs[0]
    assert ignored.finish_reason == "length" and len(ignored.token_ids) == 8


def test_max_tokens_gives_length(llm):
    out = llm.generate("hello", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(n=0), "n must be"),
    ],
)
def test_bad_sampling_params(kwargs, match):
    with pytest.raises(InvalidRequestError, match=match):
        SamplingParams(**kwargs)


def test_prompt_longer_than_context_is_refused(llm):
    with pytest.raises(InvalidRequestError, match="maximum context length is 256 tokens"):
        llm.generate({"prompt_token_ids": [5] * 300}, SamplingParams(max_tokens=4))
    assert not llm.engine.has_unfinished_requests()


def test_sampling_params_per_prompt(llm):
    greedy = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    longer = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    short, long_ = llm.generate(["hello", "hello"], [greedy, longer])
    assert len(short.outputs[0].token_ids) == 3 and len(long_.outputs[0].token_ids) == 6
    assert long_.outputs[0].token_ids[:3] == short.outputs[0].token_ids
    with pytest.raises(InvalidRequestError, match="sampling_params has 1 entries for 2 prompts"):
        llm.generate(["a", "b"], [greedy])
