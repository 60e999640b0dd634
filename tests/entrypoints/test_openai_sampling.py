"""Penalties, logit_bias, min_tokens, logprobs and echo through the official ``openai`` client;
every answer is checked against the offline ``LLM`` with the same sampling params."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from openai_harness import BASE, RunningServer, post_json

from loraserve import LLM, SamplingParams
from loraserve.lora.request import LoRARequest

PROMPT = "the quick brown fox"
CHAT = [{"role": "user", "content": "hello"}]
MAX_TOKENS = 10


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def offline(llama_dir: Path, server_adapters: dict[str, Path]):
    llm = LLM(str(llama_dir), enable_lora=True, max_loras=1)
    a1 = LoRARequest("a1", 1, str(server_adapters["a1"]))

    def run(prompt, lora=None, **kwargs):
        params = SamplingParams(**{"temperature": 0, "max_tokens": MAX_TOKENS, **kwargs})
        return llm.generate(prompt, params, lora_request=lora)[0].outputs[0]

    def run_chat(lora=None, **kwargs):
        tokenizer = llm.get_tokenizer()
        text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False)
        return run({"prompt_token_ids": ids}, lora, **kwargs)

    run.chat = run_chat
    run.a1 = a1
    run.tokenizer = llm.get_tokenizer()
    run.prompt_scores = lambda prompt, lora, top: llm.generate(
        prompt, SamplingParams(max_tokens=1, prompt_logprobs=top), lora_request=lora)[0].prompt_logprobs
    return run


def test_completion_logprobs_match_offline(server: RunningServer, offline):
    got = client(server).completions.create(model="a1", prompt=PROMPT, max_tokens=MAX_TOKENS,
                                            temperature=0, logprobs=3)
    expected = offline(PROMPT, offline.a1, logprobs=3)
    lp = got.choices[0].logprobs
    assert got.choices[0].text == expected.text
    assert lp.tokens == [e[t].decoded_token for t, e in zip(expected.token_ids, expected.logprobs)]
    assert lp.token_logprobs == pytest.approx(
        [e[t].logprob for t, e in zip(expected.token_ids, expected.logprobs)], abs=1e-5)
    for top, entries in zip(lp.top_logprobs, expected.logprobs):
        assert top == pytest.approx({e.decoded_token: e.logprob for e in entries.values()}, abs=1e-5)
        assert len(entries) in (3, 4)  # the top 3 and the sampled token
    lengths = [len(t) for t in lp.tokens]
    assert lp.text_offset == [sum(lengths[:i]) for i in range(len(lengths))]


def test_completion_logprobs_stream_like_whole(server: RunningServer):
    api = client(server)
    kwargs = dict(model=BASE, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, logprobs=2)
    whole = api.completions.create(**kwargs).choices[0].logprobs
    chunks = [c.choices[0] for c in api.completions.create(stream=True, **kwargs) if c.choices]
    assert [t for c in chunks for t in c.logprobs.tokens] == whole.tokens
    assert [v for c in chunks for v in c.logprobs.token_logprobs] == pytest.approx(whole.token_logprobs)
    assert [o for c in chunks for o in c.logprobs.text_offset] == whole.text_offset


def test_chat_logprobs_match_offline(server: RunningServer, offline):
    got = client(server).chat.completions.create(
        model=BASE, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0, logprobs=True,
        top_logprobs=2)
    expected = offline.chat(logprobs=2)
    content = got.choices[0].logprobs.content
    assert got.choices[0].message.content == expected.text
    assert len(content) == len(expected.token_ids) == got.usage.completion_tokens
    for entry, token, entries in zip(content, expected.token_ids, expected.logprobs):
        assert entry.token == entries[token].decoded_token
        assert entry.logprob == pytest.approx(entries[token].logprob, abs=1e-5)
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.top_logprobs[0].logprob >= entry.logprob  # greedy: the top one is sampled
    plain = client(server).chat.completions.create(model=BASE, messages=CHAT, max_tokens=3)
    assert plain.choices[0].logprobs is None


def test_chat_logprobs_stream_like_whole(server: RunningServer):
    api = client(server)
    kwargs = dict(model="a1", messages=CHAT, max_tokens=MAX_TOKENS, temperature=0, logprobs=True,
                  top_logprobs=0)
    whole = api.chat.completions.create(**kwargs).choices[0].logprobs.content
    chunks = [c.choices[0] for c in api.chat.completions.create(stream=True, **kwargs)]
    streamed = [e for c in chunks if c.logprobs for e in c.logprobs.content]
    assert [(e.token, e.top_logprobs) for e in streamed] == [(e.token, []) for e in whole]


@pytest.mark.parametrize("fields", [
    dict(presence_penalty=1.5, frequency_penalty=0.5),
    dict(extra_body={"repetition_penalty": 1.7}),
    dict(logit_bias={"7": 5, "9": -100}),
    dict(extra_body={"min_tokens": 5, "stop": ["ay"]}),
])
def test_sampling_fields_match_offline(server: RunningServer, offline, fields):
    extra = fields.pop("extra_body", {})
    got = client(server).completions.create(model="a1", prompt=PROMPT, max_tokens=MAX_TOKENS,
                                            temperature=0, extra_body=extra, **fields)
    params = {**fields, **extra}
    if "logit_bias" in params:
        params["logit_bias"] = {int(k): v for k, v in params["logit_bias"].items()}
    expected = offline(PROMPT, offline.a1, **params)
    assert got.choices[0].text == expected.text
    assert got.choices[0].finish_reason == expected.finish_reason
    without = {k: v for k, v in params.items() if k == "stop"}  # the field under test dropped
    assert expected.text != offline(PROMPT, offline.a1, **without).text


def test_echo_puts_the_prompt_first(server: RunningServer, offline):
    api = client(server)
    expected = PROMPT + offline(PROMPT).text
    whole = api.completions.create(model=BASE, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                   temperature=0, echo=True)
    assert whole.choices[0].text == expected
    chunks = api.completions.create(model=BASE, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                    temperature=0, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    ids = api.completions.create(model=BASE, prompt=[50, 60, 70], max_tokens=3, temperature=0,
                                 echo=True)
    answer = offline({"prompt_token_ids": [50, 60, 70]}, max_tokens=3).text
    assert ids.choices[0].text == offline.tokenizer.decode([50, 60, 70]) + answer


@pytest.mark.parametrize("body, message", [
    ({"prompt": PROMPT, "best_of": 3}, "'best_of' is not supported"),
    ({"prompt": PROMPT, "suffix": "x"}, "'suffix' is not supported"),
    ({"prompt": PROMPT, "max_tokens": 0}, "'max_tokens' must be at least 1"),  # only with echo
    ({"prompt": PROMPT, "prompt_logprobs": 1, "stream": True}, "`prompt_logprobs` are not available when `stream=True`."),
    ({"prompt": PROMPT, "prompt_logprobs": 21}, "'prompt_logprobs' must be between 0 and 20"),
    ({"prompt": PROMPT, "logprobs": 21}, "'logprobs' must be between 0 and 20, got 21"),
    ({"prompt": PROMPT, "logit_bias": {"x": 1}}, "'logit_bias' keys must be token ids, got 'x'"),
    ({"prompt": PROMPT, "logit_bias": {"99999": 1}}, "outside the vocabulary"),
    ({"prompt": PROMPT, "presence_penalty": 3}, r"presence_penalty must be in [-2, 2], got 3"),
    ({"prompt": PROMPT, "min_tokens": 20, "max_tokens": 5}, "min_tokens (20) must not exceed"),
    ({"messages": CHAT, "top_logprobs": 2}, "`logprobs` must be set to true"),
    ({"messages": CHAT, "logprobs": True, "top_logprobs": 30}, "'top_logprobs' must be between 0 and 20"),
])
def test_bad_sampling_fields_are_400(server: RunningServer, body, message):
    route = "chat/completions" if "messages" in body else "completions"
    status, text = post_json(f"{server.url}/v1/{route}", {"model": BASE, **body})
    assert status == 400 and message in text
    status, _ = post_json(f"{server.url}/v1/completions", {"model": BASE, "prompt": "hi", "max_tokens": 1})
    assert status == 200


def test_echo_with_logprobs_scores_the_prompt_as_lm_eval_asks(server: RunningServer, offline):
    """lm-eval's loglikelihood request: echo, logprobs=1, one new token, temperature 0."""
    api = client(server)
    got = api.completions.create(model="a1", prompt=PROMPT, max_tokens=1, temperature=0,
                                 echo=True, logprobs=1).choices[0]
    expected = offline(PROMPT, offline.a1, max_tokens=1, logprobs=1, prompt_logprobs=1)
    prompt_ids = offline.tokenizer.encode(PROMPT)
    lp = got.logprobs
    assert got.text == PROMPT + expected.text
    assert len(lp.tokens) == len(prompt_ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.tokens[0] == offline.tokenizer.decode(prompt_ids[:1])
    scored = offline.prompt_scores(PROMPT, offline.a1, 1)
    for p, entries in enumerate(scored[1:], start=1):
        assert lp.token_logprobs[p] == pytest.approx(entries[prompt_ids[p]].logprob, abs=1e-5)
        assert lp.tokens[p] == entries[prompt_ids[p]].decoded_token
        assert lp.top_logprobs[p] == pytest.approx({e.decoded_token: e.logprob for e in entries.values()}, abs=1e-5)
    assert lp.token_logprobs[-1] == pytest.approx(expected.logprobs[0][expected.token_ids[0]].logprob, abs=1e-5)
    lengths = [len(t) for t in lp.tokens]
    assert lp.text_offset == [sum(lengths[:i]) for i in range(len(lengths))]
    streamed = [c.choices[0] for c in api.completions.create(
        model="a1", prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=1, stream=True)
        if c.choices]
    whole = api.completions.create(model="a1", prompt=PROMPT, max_tokens=3, temperature=0,
                                   echo=True, logprobs=1).choices[0]
    assert "".join(c.text for c in streamed) == whole.text
    assert [t for c in streamed for t in c.logprobs.tokens] == whole.logprobs.tokens
    assert [o for c in streamed for o in c.logprobs.text_offset] == whole.logprobs.text_offset


def test_prompt_logprobs_field_as_vllm(server: RunningServer, offline):
    status, text = post_json(f"{server.url}/v1/completions",
                             {"model": BASE, "prompt": PROMPT, "max_tokens": 1, "prompt_logprobs": 2})
    assert status == 200
    got = json.loads(text)["choices"][0]["prompt_logprobs"]
    scored = offline.prompt_scores(PROMPT, None, 2)
    assert got[0] is None and len(got) == len(scored)
    for entry, entries in zip(got[1:], scored[1:]):
        assert set(entry) == {str(t) for t in entries}
        for token_id, e in entries.items():
            assert entry[str(token_id)]["logprob"] == pytest.approx(e.logprob, abs=1e-5)
            assert entry[str(token_id)]["rank"] == e.rank
            assert entry[str(token_id)]["decoded_token"] == e.decoded_token
    status, text = post_json(f"{server.url}/v1/chat/completions",
                             {"model": BASE, "messages": CHAT, "max_tokens": 1, "prompt_logprobs": 0})
    prompt_logprobs = json.loads(text)["prompt_logprobs"]
    assert status == 200 and prompt_logprobs[0] is None and len(prompt_logprobs) > 2


@pytest.mark.parametrize("stream", [False, True])
def test_echo_with_max_tokens_zero_returns_the_prompt_alone(server: RunningServer, offline, stream):
    """The classic "score this text" request: echo, logprobs, max_tokens 0 (vLLM supports it)."""
    api = client(server)
    kwargs = dict(model=BASE, prompt=PROMPT, max_tokens=0, echo=True, logprobs=0)
    if stream:
        chunks = [c for c in api.completions.create(stream=True, stream_options={"include_usage": True},
                                                    **kwargs)]
        choices = [c.choices[0] for c in chunks if c.choices]
        text = "".join(c.text for c in choices)
        token_logprobs = [v for c in choices for v in c.logprobs.token_logprobs]
        usage = chunks[-1].usage
    else:
        got = api.completions.create(**kwargs)
        text, token_logprobs, usage = got.choices[0].text, got.choices[0].logprobs.token_logprobs, got.usage
    prompt_ids = offline.tokenizer.encode(PROMPT)
    scored = offline.prompt_scores(PROMPT, None, 0)
    assert text == PROMPT
    assert token_logprobs[0] is None and len(token_logprobs) == len(prompt_ids)
    assert token_logprobs[1:] == pytest.approx(
        [entries[t].logprob for t, entries in zip(prompt_ids[1:], scored[1:])], abs=1e-5)
    assert usage.completion_tokens == 0 and usage.prompt_tokens == len(prompt_ids)
