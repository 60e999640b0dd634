"""The transport-neutral serving core: called directly (no HTTP), it answers the bytes the
aiohttp route sends; and the context-length rule runs once per request, one message everywhere."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from openai_harness import BASE, RunningServer

from loraserve.engine.admission import ContextLimit
from loraserve.entrypoints.openai import serving_chat, serving_completion

CHAT = {"model": BASE, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4,
        "temperature": 0, "stream": True}
COMPLETION = {"model": BASE, "prompt": "hello there", "max_tokens": 4, "temperature": 0}


@pytest.fixture
def fixed_ids(monkeypatch):
    """Response ids and timestamps fixed, so two answers to one request are byte-equal."""
    for module in (serving_chat, serving_completion):
        monkeypatch.setattr(module, "random_id", lambda prefix: f"{prefix}-fixed")
        monkeypatch.setattr(module, "now", lambda: 1700000000)


def _over_http(server: RunningServer, path: str, body: dict) -> tuple[int, str, bytes]:
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def _direct(server: RunningServer, path: str, body: dict) -> tuple[int, str, bytes]:
    from loraserve.entrypoints.openai.server_config import ServerConfig
    from loraserve.entrypoints.openai.serving import OpenAIServing

    async def call() -> tuple[int, str, bytes]:
        core = OpenAIServing(server.engine, ServerConfig(allow_runtime_lora_updating=True))
        response = await core.handle("POST", path, body)
        data = response.body
        if response.stream is not None:
            try:
                data = b"".join([piece async for piece in response.stream])
            finally:
                await response.stream.aclose()
        return response.status, response.headers.get("Content-Type"), data

    return server.call(call())


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", COMPLETION),
    ("/v1/chat/completions", CHAT),
    ("/v1/completions", {**COMPLETION, "model": "no-such-adapter"}),
])
def test_the_core_answers_the_bytes_the_http_route_sends(server: RunningServer, fixed_ids,
                                                         path, body):
    status, content_type, data = _direct(server, path, body)
    assert (status, content_type, data) == _over_http(server, path, body)
    if body.get("stream"):
        assert data.endswith(b"data: [DONE]\n\n") and data.count(b"data: ") > 2
    elif body["model"] != BASE:
        assert status == 404 and "no-such-adapter" in json.loads(data)["error"]["message"]
    else:
        assert status == 200 and json.loads(data)["choices"][0]["text"]


def _count_context_checks(monkeypatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    real = ContextLimit.check

    def check(self, prompt_tokens, completion_tokens, prompt_chars=None):  # noqa: ANN001, ANN202
        calls.append((prompt_tokens, completion_tokens))
        return real(self, prompt_tokens, completion_tokens, prompt_chars)

    monkeypatch.setattr(ContextLimit, "check", check)
    return calls


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", COMPLETION),
    ("/v1/chat/completions", {**CHAT, "stream": False}),
    ("/v1/chat/completions", CHAT),
])
def test_the_context_is_checked_once_per_server_request(server: RunningServer, monkeypatch,
                                                        path, body):
    calls = _count_context_checks(monkeypatch)
    status, _, _ = _over_http(server, path, body)
    assert status == 200 and len(calls) == 1, calls


def _context_message(max_model_len: int, prompt: int, completion: int) -> str:
    return (f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt + completion} tokens ({prompt} in the messages, {completion} in "
            "the completion). Please reduce the length of the messages or completion.")


def _input_message(max_model_len: int, prompt: int) -> str:
    """The server's (vLLM's): it clamps max_tokens, so only the prompt can be too long."""
    return (f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt} input tokens. Please reduce the length of the input messages.")


def test_one_context_message_from_llm_completions_and_chat(server: RunningServer, llama_dir,
                                                           monkeypatch):
    from loraserve import LLM, SamplingParams
    from loraserve.errors import InvalidRequestError

    limit = server.engine.max_model_len
    ids = [5] * (limit + 10)
    expected = _context_message(limit, len(ids), 4)
    with pytest.raises(InvalidRequestError) as refused:
        LLM(str(llama_dir)).generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=4))
    assert str(refused.value) == expected

    calls = _count_context_checks(monkeypatch)
    status, _, data = _over_http(server, "/v1/completions",
                                 {"model": BASE, "prompt": ids, "max_tokens": 4})
    assert status == 400
    assert json.loads(data)["error"]["message"] == _input_message(limit, len(ids))
    assert len(calls) == 1

    messages = [{"role": "user", "content": "word " * limit}]
    tokenizer = server.engine.tokenizer
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_len = len(tokenizer.encode(rendered, add_special_tokens=False))
    status, _, data = _over_http(server, "/v1/chat/completions",
                                 {"model": BASE, "messages": messages, "max_tokens": 4})
    assert status == 400
    assert json.loads(data)["error"]["message"] == _input_message(limit, prompt_len)
    assert len(calls) == 2
