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


GREEDY_24 = dict(temperature=0, max_tokens=24, ignore_eos=True)


def stop_across_a_token_boundary(llm, prompt):
    """(full greedy text, a 2-char stop string whose first match spans two tokens)."""
    out = llm.generate(prompt, SamplingParams(**GREEDY_24))[0].outputs[0]
    tokenizer = llm.get_tokenizer()
    ends = {len(tokenizer.decode(out.token_ids[:i])) for i in range(1, len(out.token_ids))}
    text = out.text
    for at in range(1, len(text) - 1):
        stop = text[at : at + 2]
        if text.find(stop) == at and at + 1 in ends and "\ufffd" not in stop:
            return text, stop
    raise AssertionError(f"no usable stop string in {text!r}")


def test_running_text_never_shows_the_start_of_a_stop_string(llm):
    """vLLM holds back len(stop) - 1 characters, so streamed text is never taken back."""
    full, stop = stop_across_a_token_boundary(llm, "hello world")
    engine = llm.engine
    ids = llm.get_tokenizer().encode("hello world")
    engine.add_request("held", ids, SamplingParams(stop=[stop], **GREEDY_24))
    seen = []
    while engine.has_unfinished_requests():
        seen += [out.outputs[0] for out in engine.step()]
    final = seen[-1]
    assert final.finish_reason == "stop" and final.stop_reason == stop
    assert final.text == full[: full.find(stop)]
    assert all(final.text.startswith(c.text) for c in seen)


def test_stop_string_kept_on_request_and_stop_token_ids(llm):
    full, stop = stop_across_a_token_boundary(llm, "hello world")
    kept = llm.generate("hello world", SamplingParams(
        stop=[stop], include_stop_str_in_output=True, **GREEDY_24))[0].outputs[0]
    assert kept.text == full[: full.find(stop) + len(stop)] and kept.stop_reason == stop

    out = llm.generate("hello world", SamplingParams(**GREEDY_24))[0].outputs[0]
    token = out.token_ids[5]
    first = out.token_ids.index(token)
    ended = llm.generate("hello world", SamplingParams(stop_token_ids=[token], **GREEDY_24))[0]
    comp = ended.outputs[0]
    assert comp.token_ids == out.token_ids[: first + 1]
    assert comp.finish_reason == "stop" and comp.stop_reason == token
    assert comp.text == llm.get_tokenizer().decode(out.token_ids[:first], skip_special_tokens=True)
    lengthy = llm.generate("hello world", SamplingParams(**GREEDY_24))[0].outputs[0]
    assert lengthy.finish_reason == "length" and lengthy.stop_reason is None
