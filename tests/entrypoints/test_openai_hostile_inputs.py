"""Hostile request bodies: each is a 4xx naming its cause (never a 500), and one request's
failure in the engine is a 500 for that request alone."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai_harness import BASE, RunningServer, http, start_in_thread, stream_lines

CHAT = [{"role": "user", "content": "hi"}]


def post_raw(server: RunningServer, path: str, text: str | bytes) -> tuple[int, dict]:
    """POST a body as given (``json.dumps`` cannot write NaN tokens or 100,000 levels)."""
    data = text.encode() if isinstance(text, str) else text
    request = urllib.request.Request(f"{server.url}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def completion(fields: str) -> str:
    return f'{{"model": "{BASE}", "prompt": "hi", "max_tokens": 2, {fields}}}'


def chat(fields: str) -> str:
    return f'{{"model": "{BASE}", "messages": {json.dumps(CHAT)}, "max_tokens": 2, {fields}}}'


def assert_400(server: RunningServer, path: str, body: str, *fragments: str) -> str:
    status, answer = post_raw(server, path, body)
    assert status == 400, (body[:200], answer)
    message = answer["error"]["message"]
    assert answer["error"]["type"] == "BadRequestError"
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ---- non-finite numbers ------------------------------------------------------------------


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("route, body, field", [
    ("/v1/completions", completion('"temperature": @'), "'temperature'"),
    ("/v1/chat/completions", chat('"top_p": @'), "'top_p'"),
    ("/v1/completions", completion('"logit_bias": {"3": @}'), "'logit_bias'"),
    ("/v1/load_lora_adapter", '{"lora_name": "x", "lora_path": @}', "'lora_path'"),
])
def test_json_nan_and_infinity_tokens_are_400_naming_the_field(
    server: RunningServer, route, body, field, token
):
    assert_400(server, route, body.replace("@", token), field)


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty",
                                   "frequency_penalty", "repetition_penalty"])
@pytest.mark.parametrize("literal, shown", [("1e400", "inf"), ("-1e400", "-inf"),
                                            ("1" + "0" * 400, "1000")])
def test_numbers_that_overflow_are_400_naming_the_field(server: RunningServer, field, literal,
                                                        shown):
    for route, body in (("/v1/completions", completion(f'"{field}": {literal}')),
                        ("/v1/chat/completions", chat(f'"{field}": {literal}'))):
        message = assert_400(server, route, body, f"'{field}' must be a finite number", shown)
        assert len(message) < 200


def test_overflowing_temperature_with_min_tokens_is_400(server: RunningServer):
    assert_400(server, "/v1/completions", completion('"temperature": 1e400, "min_tokens": 1'),
               "'temperature' must be a finite number, got inf")


@pytest.mark.parametrize("fields", ['"logit_bias": {"3": 1e400}',
                                    '"logit_bias": {"3": ' + "9" * 400 + "}"])
def test_overflowing_logit_bias_is_400(server: RunningServer, fields):
    assert_400(server, "/v1/completions", completion(fields), "'logit_bias' values must be finite")


def test_top_p_zero_in_float32_is_400(server: RunningServer):
    """1e-300 passes 0 < top_p but is 0 in the sampler's float32 (SamplingParams refuses it)."""
    assert_400(server, "/v1/completions", completion('"top_p": 1e-300'), "top_p")
    assert_400(server, "/v1/chat/completions", chat('"top_p": 1e-300'), "top_p")


# ---- integers that must fit C types --------------------------------------------------------

BIG = str(2**63)
HUGE = "9" * 400


@pytest.mark.parametrize("field", ["seed", "n", "max_tokens", "top_k", "min_tokens", "logprobs",
                                   "prompt_logprobs", "best_of"])
@pytest.mark.parametrize("value", [BIG, HUGE, "-" + HUGE])
def test_huge_integers_are_400_naming_the_field(server: RunningServer, field, value):
    body = completion(f'"{field}": {value}').replace('"max_tokens": 2, ', "")
    message = assert_400(server, "/v1/completions", body, f"'{field}'")
    assert len(message) < 300


@pytest.mark.parametrize("field", ["seed", "max_completion_tokens", "top_logprobs", "n"])
def test_huge_integers_in_chat_are_400(server: RunningServer, field):
    body = chat(f'"logprobs": true, "{field}": {BIG}').replace('"max_tokens": 2, ', "")
    assert_400(server, "/v1/chat/completions", body, f"'{field}'")


@pytest.mark.parametrize("seed", [-(2**63), 2**63 - 1])
def test_seed_at_the_int64_bounds_is_served(server: RunningServer, seed):
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    out = api.completions.create(model=BASE, prompt="hi", max_tokens=2, seed=seed, n=2)
    assert len(out.choices) == 2


@pytest.mark.parametrize("body, fragment", [
    (completion(f'"stop_token_ids": [{BIG}], "min_tokens": 1'), "'stop_token_ids'"),
    (completion(f'"stop_token_ids": [{HUGE}]'), "'stop_token_ids'"),
    (completion(f'"logit_bias": {{"{HUGE}": 1}}'), "'logit_bias'"),
    (completion('"logit_bias": {"\u00b2": 1}'), "'logit_bias' keys must be token ids"),
    (completion('"logit_bias": {"\u0661": 1}'), "'logit_bias' keys must be token ids"),
    (f'{{"model": "{BASE}", "prompt": [{BIG}], "max_tokens": 2}}', "'prompt'"),
    (f'{{"model": "{BASE}", "prompt": [[1], [{HUGE}]], "max_tokens": 2}}', "'prompt'"),
    (f'{{"model": "{BASE}", "prompt": [{BIG}], "max_tokens": 2, "echo": true}}', "'prompt'"),
    # inside int64 but outside the vocabulary: the engine's check, before echo decodes it
    (f'{{"model": "{BASE}", "prompt": [{2**40}], "max_tokens": 2, "echo": true}}', "token ids"),
    (f'{{"model": "{BASE}", "prompt": "hi", "max_tokens": {"9" * 5000}}}', "Malformed JSON"),
])
def test_huge_token_ids_and_digit_strings_are_400(server: RunningServer, body, fragment):
    assert_400(server, "/v1/completions", body, fragment)


def test_huge_lora_int_id_is_400(server: RunningServer):
    assert_400(server, "/v1/unload_lora_adapter", f'{{"lora_int_id": {BIG}}}', "'lora_int_id'")


# ---- nesting, huge values in messages, invalid unicode ------------------------------------


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions",
                                   "/v1/load_lora_adapter", "/v1/unload_lora_adapter"])
def test_deeply_nested_json_is_400(server: RunningServer, route):
    deep = "[" * 100_000 + "]" * 100_000
    assert_400(server, route, f'{{"model": "{BASE}", "prompt": {deep}}}', "nested too deeply")
    assert_400(server, route, deep, "nested too deeply")


@pytest.mark.parametrize("route, body", [
    ("/v1/completions", '{{"model": "base", "prompt": {}}}'),
    ("/v1/completions", '{{"model": {}, "prompt": "hi"}}'),
    ("/v1/chat/completions", '{{"model": "base", "messages": {}}}'),
    ("/v1/chat/completions", '{{"model": "base", "messages": [{}]}}'),
    ("/v1/chat/completions",
     '{{"model": "base", "messages": [{{"role": "user", "content": [{}]}}]}}'),
])
@pytest.mark.parametrize("value", [
    "[" * 800 + "]" * 800,  # deep, but within the parser's limit
    json.dumps(["x" * 1_000_000]),
    json.dumps([list(range(100_000))]),
])
def test_error_messages_quote_values_briefly(server: RunningServer, route, body, value):
    message = assert_400(server, route, body.format(value))
    assert len(message) < 400, message[:400]


@pytest.mark.parametrize("route, body, field", [
    ("/v1/completions", '{"model": "base", "prompt": "a\\ud800b"}', "'prompt'"),
    ("/v1/completions", '{"model": "base", "prompt": ["ok", "\\udfff"]}', "'prompt'"),
    ("/v1/completions", '{"model": "base", "prompt": "hi", "stop": "\\ud800"}', "'stop'"),
    ("/v1/completions", '{"model": "\\ud800", "prompt": "hi"}', "'model'"),
    ("/v1/chat/completions",
     '{"model": "base", "messages": [{"role": "user", "content": "\\ud800"}]}',
     "'messages[0].content'"),
    ("/v1/chat/completions",
     '{"model": "base", "messages": [{"role": "\\ud800", "content": "hi"}]}',
     "'messages[0].role'"),
    ("/v1/chat/completions", '{"model": "base", "messages": [{"role": "user", "content": '
     '[{"type": "text", "text": "\\ud800"}]}]}', "'messages[0].content'"),
    ("/v1/load_lora_adapter", '{"lora_name": "\\ud800", "lora_path": "/x"}', "'lora_name'"),
])
def test_lone_surrogates_are_400(server: RunningServer, route, body, field):
    assert_400(server, route, body, field, "valid Unicode")


def test_lone_surrogate_from_chat_template_kwargs_is_400(server: RunningServer, monkeypatch):
    tokenizer = server.engine.tokenizer
    render = tokenizer.apply_chat_template
    monkeypatch.setattr(tokenizer, "apply_chat_template",
                        lambda *a, extra="", **k: render(*a, **k) + extra)
    assert_400(server, "/v1/chat/completions", chat('"chat_template_kwargs": {"extra": "\\ud800"}'),
               "valid Unicode")


# ---- request size ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_server(llama_dir: Path) -> Iterator[RunningServer]:
    """At most 3 prompts and 4 sequences per request."""
    from loraserve.config import EngineConfig
    from loraserve.entrypoints.openai.server_config import RequestLimits, ServerConfig

    running, stop = start_in_thread(
        EngineConfig(model=str(llama_dir), served_model_name=BASE),
        ServerConfig(port=0, limits=RequestLimits(max_prompts_per_request=3,
                                                  max_sequences_per_request=4)),
    )
    try:
        yield running
    finally:
        stop()


def test_prompts_and_sequences_per_request_are_bounded(limited_server: RunningServer):
    api = openai.OpenAI(base_url=f"{limited_server.url}/v1", api_key="x", max_retries=0)
    assert len(api.completions.create(model=BASE, prompt=["a", "b", "c"], max_tokens=1).choices) == 3
    assert len(api.completions.create(model=BASE, prompt=["a", "b"], max_tokens=1, n=2).choices) == 4
    with pytest.raises(openai.BadRequestError, match="4 prompts.*3 per request.*--max-prompts-per"):
        api.completions.create(model=BASE, prompt=["a"] * 4, max_tokens=1)
    with pytest.raises(openai.BadRequestError, match=r"6 sequences \(3 prompts x n=2\).*4 per "
                                                     r"request.*--max-sequences-per-request"):
        api.completions.create(model=BASE, prompt=[[1], [2], [3]], max_tokens=1, n=2)
    with pytest.raises(openai.BadRequestError, match="--max-sequences-per-request"):
        api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=1, n=5)


def test_default_limits_refuse_before_tokenizing(server: RunningServer, monkeypatch):
    tokenizer = server.engine.tokenizer
    calls: list[int] = []
    monkeypatch.setattr(tokenizer, "encode", lambda *a, **k: calls.append(1) or [1])
    assert_400(server, "/v1/completions",
               json.dumps({"model": BASE, "prompt": ["hi"] * 100_000, "max_tokens": 1}),
               "100000 prompts", "1024 per request", "--max-prompts-per-request")
    assert_400(server, "/v1/completions",
               json.dumps({"model": BASE, "prompt": ["hi"] * 500, "max_tokens": 1, "n": 128}),
               "64000 sequences", "2048 per request", "--max-sequences-per-request")
    assert not calls


def test_bodies_over_64_mib_are_413(server: RunningServer):
    from loraserve.entrypoints.openai.api_server import MAX_BODY_BYTES

    body = json.dumps({"model": BASE, "prompt": [1] * (MAX_BODY_BYTES // 3 + 1)})
    status, answer = post_raw(server, "/v1/completions", body)
    assert status == 413 and "too large" in answer["error"]["message"].lower()


def test_large_bodies_are_decoded_off_the_event_loop(server: RunningServer, monkeypatch):
    from loraserve.entrypoints.openai import api_server

    async def loop_thread() -> str:
        return threading.current_thread().name

    threads: list[str] = []
    decode = api_server.parse_json_body

    def spy(raw: bytes):  # noqa: ANN202
        threads.append(threading.current_thread().name)
        return decode(raw)

    monkeypatch.setattr(api_server, "parse_json_body", spy)
    small = json.dumps({"model": BASE, "prompt": "hi", "max_tokens": 1})
    large = json.dumps({"model": BASE, "prompt": "x" * (2 * api_server.THREAD_PARSE_BYTES)})
    assert post_raw(server, "/v1/completions", small)[0] == 200
    assert post_raw(server, "/v1/completions", large)[0] == 400  # longer than the context
    on_loop = server.call(loop_thread())
    assert threads[0] == on_loop and threads[1] != on_loop, threads


# ---- headers and logs ------------------------------------------------------------------------


def test_adapter_names_with_newlines_cannot_forge_log_lines(server: RunningServer, caplog,
                                                            server_adapters):
    name = "evil\nINFO loraserve: forged line"  # it shows in /metrics labels too
    with caplog.at_level(logging.DEBUG):
        status, _, text = http("POST", f"{server.url}/v1/load_lora_adapter",
                               {"lora_name": name, "lora_path": str(server_adapters["extra"])})
        assert status == 200 and text == f"Success: LoRA adapter '{name}' added successfully"
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        assert api.completions.create(model=name, prompt="hi", max_tokens=1).choices
        status, _, _ = http("POST", f"{server.url}/v1/unload_lora_adapter", {"lora_name": name})
        assert status == 200
        with pytest.raises(openai.NotFoundError):
            api.completions.create(model=name, prompt="hi", max_tokens=1)
    messages = [record.getMessage() for record in caplog.records]
    assert any("evil" in m for m in messages)  # the name is logged, escaped
    forged = [m for m in messages if "evil\nINFO" in m]
    assert not forged, forged


# ---- a sequence that fails in the engine ----------------------------------------------------

POISON_SEED = 4242


@pytest.fixture
def poisoned_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampling raises for every sequence whose seed is POISON_SEED, as a bad row would."""
    from loraserve.engine import sampler

    sample_row = sampler._sample_row

    def failing(logits, seq):  # noqa: ANN001, ANN202
        if seq.params.seed == POISON_SEED:
            raise RuntimeError("injected sampling failure")
        return sample_row(logits, seq)

    monkeypatch.setattr(sampler, "_sample_row", failing)


def test_a_failed_sequence_is_a_500_for_its_request_alone(server: RunningServer, poisoned_sampler):
    api = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    greedy = {"model": BASE, "max_tokens": 8, "temperature": 0, "extra_body": {"ignore_eos": True}}
    poison = {"model": BASE, "max_tokens": 8, "temperature": 1.0, "seed": POISON_SEED}

    async def run() -> list:
        return await asyncio.gather(
            api.completions.create(prompt="the fox", **greedy),
            api.completions.create(prompt="the fox", **poison),
            api.chat.completions.create(messages=CHAT, **poison),
            api.chat.completions.create(messages=CHAT, **greedy),
            return_exceptions=True,
        )

    done, failed, chat_failed, chat_done = asyncio.run(run())
    assert done.choices[0].finish_reason == "length" and len(done.choices[0].text) > 0
    assert chat_done.choices[0].finish_reason == "length"
    for error in (failed, chat_failed):
        assert isinstance(error, openai.InternalServerError), error
        assert error.status_code == 500
        assert "choice 0 failed" in error.message and "injected sampling failure" in error.message
    assert http("GET", f"{server.url}/health")[0] == 200


@pytest.mark.parametrize("route, body", [
    ("/v1/completions", {"prompt": "the fox"}),
    ("/v1/chat/completions", {"messages": CHAT}),
])
def test_a_failed_sequence_ends_its_stream_with_an_error_event(server: RunningServer,
                                                               poisoned_sampler, route, body):
    body = {"model": BASE, "max_tokens": 8, "seed": POISON_SEED, "stream": True, **body}
    _, lines = stream_lines(f"{server.url}{route}", body)
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["code"] == 500 and error["type"] == "InternalServerError"
    assert "injected sampling failure" in error["message"]
    last_chunk = json.loads(lines[-3].removeprefix("data: "))
    assert last_chunk["choices"][0]["finish_reason"] == "error"
