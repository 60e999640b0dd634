"""One request schema for every route (issue 18, item 4), through the openai client and
aiohttp on a live server: each implemented field changes the answer as vLLM's does (prompts
compared with the tokenizer's own chat template), each refused field is a 400 whose message
and ``param`` name it, ``/openapi.json`` is valid OpenAPI listing every route, ``/docs`` is
HTML, and ``load_inplace`` swaps weights without a running request seeing a mix."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from openai_harness import BASE, RunningServer, base_model_server

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}|{{ m['content'] }}]{% endfor %}"
            "{% if add_generation_prompt %}[go]{% endif %}{% if shout %}!{% endif %}")


@pytest.fixture(scope="module")
def hf_tokenizer(llama_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(llama_dir))


@pytest.fixture(scope="module")
def trusting(llama_dir: Path) -> Iterator[RunningServer]:
    """A server started with --trust-request-chat-template."""
    with base_model_server(llama_dir, trust_request_chat_template=True) as running:
        yield running


async def post(url: str, body: object) -> tuple[int, object]:
    """Status and the JSON body (the text, for the load routes' plain-text answers)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()


@pytest.fixture
async def client(request: pytest.FixtureRequest) -> openai.AsyncOpenAI:
    """The openai client for the test's server (``server`` or ``trusting``)."""
    server = request.getfixturevalue("server")
    async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x",
                                  max_retries=0) as api:
        yield api


def template_ids(tokenizer, messages, **options) -> list[int]:  # noqa: ANN001
    text = tokenizer.apply_chat_template(messages, tokenize=False, **options)
    return tokenizer(text, add_special_tokens=False).input_ids


async def chat_prompt_ids(server: RunningServer, messages: list[dict], **fields) -> list[int]:
    status, body = await post(f"{server.url}/v1/chat/completions",
                              {"model": BASE, "messages": messages, "max_tokens": 1,
                               "return_token_ids": True, **fields})
    assert status == 200, body
    return body["prompt_token_ids"]


# ---- refused fields: a 400 naming the field, in the message and in `param` -------------------

REFUSED = [
    ("chat", "tool_choice", "required", "`tools` must be set"),
    ("chat", "functions", [{"name": "f"}], "use 'tools'"),
    ("chat", "function_call", "auto", "use 'tool_choice'"),
    ("chat", "structural_tag", {"type": "structural_tag"}, "'structural_tag'"),
    ("chat", "guided_decoding_backend", "xgrammar", "llguidance"),
    ("chat", "guided_whitespace_pattern", " *", "'guided_whitespace_pattern'"),
    ("chat", "echo", True, "'echo'"),
    ("chat", "reasoning_effort", "low", "'reasoning_effort'"),
    ("chat", "use_beam_search", True, "beam search"),
    ("chat", "logits_processors", ["m.P"], "'logits_processors'"),
    ("chat", "allowed_token_ids", [1, 2], "'allowed_token_ids'"),
    ("chat", "priority", 1, "'priority'"),
    ("chat", "audio", {"voice": "alloy"}, "'audio'"),
    ("completion", "best_of", 2, "'best_of'"),
    ("completion", "suffix", "x", "'suffix'"),
    ("completion", "response_format", {"type": "json_schema"}, "json_schema.schema"),
    ("completion", "prompt_embeds", "AAAA", "'prompt_embeds'"),
    ("completion", "return_tokens_as_token_ids", True, "'return_tokens_as_token_ids'"),
    ("completion", "spaces_between_special_tokens", False, "'spaces_between_special_tokens'"),
    ("completion", "length_penalty", 2.0, "beam search"),
    ("completion", "kv_transfer_params", {"a": 1}, "'kv_transfer_params'"),
]


@pytest.mark.parametrize("route, field, value, fragment", REFUSED)
async def test_refused_fields_are_400_naming_them(server: RunningServer, route, field, value,
                                                  fragment):
    body = ({"messages": CHAT} if route == "chat" else {"prompt": "hi"}) | {field: value}
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    status, answer = await post(f"{server.url}{path}", {"model": BASE, "max_tokens": 1, **body})
    assert status == 400, answer
    assert fragment in answer["error"]["message"] and field in answer["error"]["message"]
    assert answer["error"]["param"] == field


async def test_refused_fields_with_their_no_op_values_are_served(
        client: openai.AsyncOpenAI, server: RunningServer):
    no_ops = {"response_format": {"type": "text"}, "tools": None, "tool_choice": "none",
              "use_beam_search": False, "priority": 0, "best_of": None, "echo": False,
              "user": "u-1", "metadata": {"k": "v"}, "store": False, "modalities": ["text"]}
    answer = await client.chat.completions.create(model=BASE, messages=CHAT, max_tokens=1,
                                                       extra_body=no_ops)
    assert answer.choices[0].finish_reason == "length"


async def test_tools_through_the_openai_client_are_vllms_400(
        client: openai.AsyncOpenAI, server: RunningServer):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model=BASE, messages=CHAT, tools=[tool])
    assert '"auto" tool choice requires --enable-auto-tool-choice' in refused.value.message


@pytest.mark.parametrize("field, value", [("min_p", 0.5), ("skip_special_tokens", False),
                                          ("bad_words", ["x"]), ("truncate_prompt_tokens", 2)])
async def test_sampling_fields_pass_through_when_sampling_params_has_them(
        server: RunningServer, field, value):
    from loraserve.sampling_params import SamplingParams

    status, answer = await post(f"{server.url}/v1/completions",
                                {"model": BASE, "prompt": "hi", "max_tokens": 1, field: value})
    if field in {f.name for f in dataclasses.fields(SamplingParams)}:
        assert status == 200, answer
    else:
        assert status == 400 and answer["error"]["param"] == field, answer


# ---- errors name the field ----------------------------------------------------------------


@pytest.mark.parametrize("body, param", [
    ({"prompt": "hi", "temperature": "hot"}, "temperature"),
    ({"prompt": "hi", "stop": [1]}, "stop"),
    ({"prompt": "hi", "logit_bias": {"x": 1}}, "logit_bias"),
    ({"prompt": "hi", "n": 2, "temperature": 0}, "n"),
    ({"prompt": "hi", "stream_options": {"continuous_usage_stats": True}, "stream": True},
     "stream_options.continuous_usage_stats"),
])
async def test_completion_errors_fill_param(server: RunningServer, body, param):
    status, answer = await post(f"{server.url}/v1/completions", {"model": BASE, **body})
    assert status == 400 and answer["error"]["param"] == param, answer


@pytest.mark.parametrize("messages, param, fragment", [
    ([{"role": "user", "content": None}], "messages[0].content", "must be a string"),
    ([{"role": "user"}], "messages[0].content", "must be a string"),
    ([{"role": "assistant", "content": None, "tool_calls": []}], "messages[0].content",
     "null only"),
    ([CHAT[0], {"role": "", "content": "x"}], "messages[1].role", "non-empty"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[0].content", "only text parts"),
])
async def test_chat_message_errors_fill_param(server: RunningServer, messages, param, fragment):
    status, answer = await post(f"{server.url}/v1/chat/completions",
                                {"model": BASE, "messages": messages})
    assert status == 400 and answer["error"]["param"] == param, answer
    assert f"'{param}'" in answer["error"]["message"] and fragment in answer["error"]["message"]


async def test_n_above_one_with_greedy_sampling_is_vllms_400(
        client: openai.AsyncOpenAI, server: RunningServer):
    with pytest.raises(openai.BadRequestError) as refused:
        await client.completions.create(model=BASE, prompt="hi", n=2, temperature=0)
    assert "n must be 1 when using greedy sampling, got 2." in refused.value.message


# ---- implemented fields change the answer as vLLM's do --------------------------------------


async def test_empty_model_means_the_base_model(client: openai.AsyncOpenAI, server: RunningServer):
    answer = await client.completions.create(model="", prompt="hi", max_tokens=2,
                                                  temperature=0)
    base = await client.completions.create(model=BASE, prompt="hi", max_tokens=2,
                                                temperature=0)
    assert answer.model == BASE and answer.choices[0].text == base.choices[0].text


async def test_chat_prompt_ids_are_the_tokenizers_template(server: RunningServer, hf_tokenizer):
    """return_token_ids shows the prompt: it is the tokenizer's own template output under
    add_generation_prompt, continue_final_message and add_special_tokens."""
    assert await chat_prompt_ids(server, CHAT) == template_ids(
        hf_tokenizer, CHAT, add_generation_prompt=True)
    assert await chat_prompt_ids(server, CHAT, add_generation_prompt=False) == template_ids(
        hf_tokenizer, CHAT, add_generation_prompt=False)
    prefill = [*CHAT, {"role": "assistant", "content": "Well, the"}]
    ids = await chat_prompt_ids(server, prefill, add_generation_prompt=False,
                                continue_final_message=True)
    assert ids == template_ids(hf_tokenizer, prefill, continue_final_message=True)
    assert hf_tokenizer.decode(ids).endswith("Well, the")
    # chat_template_kwargs win over the request's fields, as in vLLM
    assert await chat_prompt_ids(server, CHAT, chat_template_kwargs={
        "add_generation_prompt": False}) == template_ids(hf_tokenizer, CHAT,
                                                         add_generation_prompt=False)
    with_bos = await chat_prompt_ids(server, CHAT, add_special_tokens=True)
    assert with_bos == hf_tokenizer(hf_tokenizer.apply_chat_template(
        CHAT, tokenize=False, add_generation_prompt=True)).input_ids


async def test_text_parts_are_joined_with_newlines(server: RunningServer, hf_tokenizer):
    parts = [{"role": "user", "content": [{"type": "text", "text": "one"},
                                          {"type": "text", "text": "two"}]}]
    joined = [{"role": "user", "content": "one\ntwo"}]
    assert await chat_prompt_ids(server, parts) == template_ids(
        hf_tokenizer, joined, add_generation_prompt=True)


async def test_continue_final_message_with_a_generation_prompt_is_400(server: RunningServer):
    status, answer = await post(f"{server.url}/v1/chat/completions",
                                {"model": BASE, "messages": CHAT, "continue_final_message": True})
    assert status == 400 and answer["error"]["param"] == "continue_final_message"
    assert "Cannot set both `continue_final_message` and `add_generation_prompt`" in str(answer)


async def test_request_chat_template_is_refused_unless_trusted(
        client: openai.AsyncOpenAI, server: RunningServer):
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model=BASE, messages=CHAT, max_tokens=1, extra_body={"chat_template": TEMPLATE})
    assert "--trust-request-chat-template is not set" in refused.value.message
    assert refused.value.body["param"] == "chat_template"


async def test_trusted_request_chat_template_and_its_kwargs(trusting: RunningServer,
                                                           hf_tokenizer):
    ids = await chat_prompt_ids(trusting, CHAT, chat_template=TEMPLATE,
                                chat_template_kwargs={"shout": True})
    expected = hf_tokenizer.apply_chat_template(CHAT, chat_template=TEMPLATE, tokenize=False,
                                                add_generation_prompt=True, shout=True)
    assert expected.endswith("[go]!")
    assert ids == hf_tokenizer(expected, add_special_tokens=False).input_ids


async def test_return_token_ids(client: openai.AsyncOpenAI, server: RunningServer, hf_tokenizer):
    status, answer = await post(f"{server.url}/v1/completions",
                                {"model": BASE, "prompt": "hello there", "max_tokens": 4,
                                 "temperature": 0, "return_token_ids": True})
    assert status == 200, answer
    choice = answer["choices"][0]
    assert choice["prompt_token_ids"] == hf_tokenizer("hello there").input_ids
    assert len(choice["token_ids"]) == answer["usage"]["completion_tokens"] == 4
    assert hf_tokenizer.decode(choice["token_ids"]) == choice["text"]
    status, plain = await post(f"{server.url}/v1/completions",
                               {"model": BASE, "prompt": "hello there", "max_tokens": 1})
    assert "token_ids" not in plain["choices"][0]
    status, bare = await post(f"{server.url}/v1/completions",
                              {"model": BASE, "prompt": "hello there", "max_tokens": 1,
                               "add_special_tokens": False, "return_token_ids": True})
    assert bare["choices"][0]["prompt_token_ids"] == hf_tokenizer(
        "hello there", add_special_tokens=False).input_ids
    chat = await client.chat.completions.create(
        model=BASE, messages=CHAT, max_tokens=3, temperature=0,
        extra_body={"return_token_ids": True})
    assert len(chat.choices[0].token_ids) == chat.usage.completion_tokens
    assert len(chat.prompt_token_ids) == chat.usage.prompt_tokens
    stream = await client.chat.completions.create(
        model=BASE, messages=CHAT, max_tokens=3, temperature=0, stream=True,
        extra_body={"return_token_ids": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[0].prompt_token_ids == chat.prompt_token_ids
    streamed = [t for chunk in chunks[1:] for c in chunk.choices for t in c.token_ids]
    assert streamed == chat.choices[0].token_ids


async def test_max_tokens_beyond_the_context_is_clamped(
        client: openai.AsyncOpenAI, server: RunningServer):
    limit = server.engine.max_model_len
    prompt = [5] * (limit - 3)
    answer = await client.completions.create(model=BASE, prompt=prompt, max_tokens=50,
                                                  temperature=0, extra_body={"ignore_eos": True})
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 3
    with pytest.raises(openai.BadRequestError) as refused:
        await client.completions.create(model=BASE, prompt=[5] * limit, max_tokens=1)
    assert refused.value.body["message"] == (
        f"This model's maximum context length is {limit} tokens. However, your request has "
        f"{limit} input tokens. Please reduce the length of the input messages.")


# ---- /openapi.json and /docs --------------------------------------------------------------


async def test_openapi_is_valid_and_lists_every_route(server: RunningServer):
    from openapi_spec_validator import validate

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/openapi.json") as response:
            assert response.status == 200
            document = await response.json()
        async with session.get(f"{server.url}/docs") as response:
            assert response.status == 200 and response.content_type == "text/html"
            page = await response.text()
    validate(document)
    routes = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    for expected in [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                     ("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter"),
                     ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/invocations"),
                     ("POST", "/adapters"), ("DELETE", "/adapters/{name}"), ("GET", "/v1/models"),
                     ("GET", "/v1/models/{model_id}"), ("GET", "/openapi.json"), ("GET", "/docs"),
                     ("GET", "/health"), ("GET", "/metrics"), ("GET", "/ping"), ("POST", "/ping")]:
        assert expected in routes, expected
    chat = document["components"]["schemas"]["ChatCompletionBody"]["properties"]
    assert {"messages", "continue_final_message", "chat_template", "tools"} <= set(chat)
    assert "/v1/chat/completions" in page and "ChatCompletionBody" in page


# ---- load_inplace -------------------------------------------------------------------------


async def greedy_text(client: openai.AsyncOpenAI, model: str, max_tokens: int) -> str:
    out = await client.completions.create(model=model, prompt="hello", max_tokens=max_tokens,
                                          temperature=0, extra_body={"ignore_eos": True})
    return out.choices[0].text


async def test_load_inplace_swaps_weights_and_running_requests_finish_on_the_old(
        client: openai.AsyncOpenAI, server: RunningServer, server_adapters, monkeypatch):
    load = f"{server.url}/v1/load_lora_adapter"

    async def greedy(model: str) -> str:
        return await greedy_text(client, model, max_tokens=48)

    extra, a1 = str(server_adapters["extra"]), str(server_adapters["a1"])
    assert (await post(load, {"lora_name": "swap", "lora_path": extra}))[0] == 200
    old, new = await greedy("swap"), await greedy("a1")
    assert old != new
    status, answer = await post(load, {"lora_name": "swap", "lora_path": a1})
    assert status == 400 and "already been loaded" in answer["error"]["message"]

    engine = server.engine.engine
    step = engine.step

    def slow_step():  # noqa: ANN202 - 48 steps take ~0.7 s: the swap lands mid-generation
        time.sleep(0.015)
        return step()

    monkeypatch.setattr(engine, "step", slow_step)
    stream = await client.completions.create(model="swap", prompt="hello", max_tokens=48,
                                             temperature=0, stream=True,
                                             extra_body={"ignore_eos": True})
    pieces = [(await anext(stream)).choices[0].text]  # running on the old weights
    status, answer = await post(load, {"lora_name": "swap", "lora_path": a1,
                                       "load_inplace": True})
    assert status == 200, answer
    assert engine.has_unfinished_requests()  # the swap happened while it ran
    pieces += [chunk.choices[0].text async for chunk in stream]
    assert "".join(pieces) == old  # finished on the old weights, never a mix
    assert await greedy("swap") == new
    await post(f"{server.url}/v1/unload_lora_adapter", {"lora_name": "swap"})


async def test_requests_during_load_inplace_wait_for_the_new_weights(
        client: openai.AsyncOpenAI, server: RunningServer, server_adapters, monkeypatch):
    """While the weights under a name are replaced, a request naming it waits and gets the
    new weights: never a 404 (the name is briefly unregistered during the swap)."""
    import asyncio
    import threading

    load = f"{server.url}/v1/load_lora_adapter"

    async def greedy(model: str) -> str:
        return await greedy_text(client, model, max_tokens=8)

    extra, a1 = str(server_adapters["extra"]), str(server_adapters["a1"])
    assert (await post(load, {"lora_name": "swap2", "lora_path": extra}))[0] == 200
    new = await greedy("a1")
    add, gate = server.engine.add_lora, threading.Event()

    async def gated_add(request):  # noqa: ANN001, ANN202 - runs on the server's loop
        await asyncio.to_thread(gate.wait, 30)  # the old adapter is out, the new not in yet
        return await add(request)

    monkeypatch.setattr(server.engine, "add_lora", gated_add)
    swap = asyncio.create_task(post(load, {"lora_name": "swap2", "lora_path": a1,
                                           "load_inplace": True}))
    for _ in range(300):  # until the old registration is gone (however busy the machine)
        if "swap2" not in {m.id for m in (await client.models.list()).data}:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the old adapter was never unloaded")
    requests = [asyncio.create_task(greedy("swap2")) for _ in range(3)]
    await asyncio.sleep(0.3)  # let them reach the server while the name is unregistered
    gate.set()
    texts = await asyncio.gather(*requests)
    assert (await swap)[0] == 200
    assert texts == [new] * 3
    monkeypatch.undo()
    await post(f"{server.url}/v1/unload_lora_adapter", {"lora_name": "swap2"})
