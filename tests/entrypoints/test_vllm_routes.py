"""vLLM's routes besides the OpenAI ones, through real clients on a live loopback server:
/tokenize and /detokenize (against transformers' tokenizer), /ping, GET /v1/models/{id}
(the ``openai`` client's ``models.retrieve``), SageMaker's /invocations and /adapters, CORS,
--root-path, --response-role and --chat-template."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from openai_harness import BASE, RunningServer, start_in_thread

from loraserve.entrypoints.openai.server_config import CORSConfig, LoRAModulePath, ServerConfig

KEY = "route-key"
ALLOWED = "https://allowed.example"
SERVER_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                   "{% if add_generation_prompt %}<reply>{% endif %}")
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
TEXTS = ["hello world, how are you today?", "select name from users where id = 42", " lazy  dog\n"]


@pytest.fixture(scope="module")
def hf_tokenizer(llama_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(llama_dir))


@pytest.fixture(scope="module")
def proxied(llama_dir: Path, server_adapters: dict[str, Path]) -> Iterator[RunningServer]:
    """A server as a deployment behind a proxy: API key, --root-path /llm, CORS for one
    origin, --response-role bot and a --chat-template of its own."""
    from loraserve.config import EngineConfig

    engine = EngineConfig(model=str(llama_dir), served_model_name=BASE, enable_lora=True,
                          max_loras=2, max_logprobs=5)
    config = ServerConfig(
        port=0, api_key=KEY, lora_modules=[LoRAModulePath("a1", str(server_adapters["a1"]))],
        root_path="/llm", cors=CORSConfig(allowed_origins=[ALLOWED]), response_role="bot",
        chat_template=SERVER_TEMPLATE,
    )
    running, stop = start_in_thread(engine, config)
    try:
        yield running
    finally:
        stop()


async def call(method: str, url: str, body: dict | None = None,
               headers: dict | None = None) -> tuple[int, dict, object]:
    """One request with aiohttp: status, headers, and the JSON body (text when not JSON)."""
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, json=body, headers=headers) as response:
            text = await response.text()
            try:
                payload = await response.json(content_type=None) if text else text
            except ValueError:
                payload = text
            return response.status, dict(response.headers), payload


# ---- /ping, /v1/models/{id} -----------------------------------------------------------------


async def test_ping_answers_get_and_post(server: RunningServer):
    for method in ("GET", "POST"):
        status, _, body = await call(method, f"{server.url}/ping")
        assert (status, body) == (200, "")


def test_retrieve_model_through_the_openai_client(server: RunningServer, server_adapters):
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    base = api.models.retrieve(BASE)
    assert base.id == BASE and base.model_dump()["parent"] is None
    adapter = api.models.retrieve("a1").model_dump()
    assert adapter["parent"] == BASE and adapter["root"] == str(server_adapters["a1"])
    listed = {m.id: m.model_dump() for m in api.models.list().data}
    assert {**listed["a1"], "created": 0} == {**adapter, "created": 0}
    with pytest.raises(openai.NotFoundError) as info:
        api.models.retrieve("no-such-model")
    assert "The model `no-such-model` does not exist." in str(info.value)


async def test_retrieve_unknown_model_is_openai_shaped_404(server: RunningServer):
    status, _, body = await call("GET", f"{server.url}/v1/models/org/no-such-model")
    assert status == 404
    assert body == {"error": {"message": "The model `org/no-such-model` does not exist.",
                              "type": "NotFoundError", "param": None, "code": 404}}


# ---- /tokenize, /detokenize -----------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
async def test_tokenize_then_detokenize_equal_the_tokenizer(server: RunningServer, hf_tokenizer,
                                                            text: str):
    status, _, body = await call("POST", f"{server.url}/tokenize",
                                 {"model": BASE, "prompt": text, "return_token_strs": True})
    ids = hf_tokenizer(text).input_ids
    assert status == 200
    assert body == {"count": len(ids), "max_model_len": server.engine.max_model_len,
                    "tokens": ids, "token_strs": hf_tokenizer.convert_ids_to_tokens(ids)}
    _, _, plain = await call("POST", f"{server.url}/tokenize",
                             {"prompt": text, "add_special_tokens": False})
    assert plain["tokens"] == hf_tokenizer(text, add_special_tokens=False).input_ids
    assert plain["token_strs"] is None
    status, _, back = await call("POST", f"{server.url}/detokenize", {"model": BASE, "tokens": ids})
    assert status == 200 and back == {"prompt": hf_tokenizer.decode(ids)}


@pytest.mark.parametrize("options", [
    {}, {"add_generation_prompt": False},
    {"add_generation_prompt": False, "continue_final_message": True},
])
async def test_tokenize_chat_equals_the_chat_template(server: RunningServer, hf_tokenizer, options):
    status, _, body = await call("POST", f"{server.url}/tokenize",
                                 {"model": "a1", "messages": CHAT, **options})
    expected = hf_tokenizer.apply_chat_template(
        CHAT, tokenize=True, return_dict=False,
        add_generation_prompt=options.get("add_generation_prompt", True),
        continue_final_message=options.get("continue_final_message", False))
    assert status == 200 and body["tokens"] == list(expected) and body["count"] == len(expected)


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/tokenize", {}, 400, "'prompt' (a string) or 'messages' is required"),
    ("/tokenize", {"prompt": 7}, 400, "'prompt' must be a string"),
    ("/tokenize", {"prompt": "hi", "add_special_tokens": "yes"}, 400, "'add_special_tokens'"),
    ("/tokenize", {"prompt": "hi", "return_token_strs": 1}, 400, "'return_token_strs'"),
    ("/tokenize", {"messages": []}, 400, "'messages' is required"),
    ("/tokenize", {"messages": [{"content": "x"}]}, 400, "'messages[0].role'"),
    ("/tokenize", {"messages": CHAT, "add_generation_prompt": True,
                   "continue_final_message": True}, 400, "Cannot set both"),
    ("/tokenize", {"messages": CHAT, "tools": ["x"]}, 400, "'tools' must be an array of objects"),
    ("/tokenize", {"messages": CHAT, "chat_template": "{{ 1 }}"}, 400,
     "--trust-request-chat-template is not set"),
    ("/tokenize", {"messages": CHAT, "chat_template_kwargs": {"chat_template": "x"}}, 400,
     "--trust-request-chat-template is not set"),
    ("/tokenize", {"prompt": "hi", "model": "no-such-model"}, 404, "`no-such-model` does not exist"),
    ("/tokenize", {"prompt": "x " * 5000}, 400, "maximum context length"),
    ("/detokenize", {}, 400, "'tokens' must be an array of token ids"),
    ("/detokenize", {"tokens": [1, "2"]}, 400, "'tokens' must be an array of token ids"),
    ("/detokenize", {"tokens": [1, 10**6]}, 400, "'tokens' has token ids outside the vocabulary"),
    ("/detokenize", {"tokens": [2**70]}, 400, "'tokens' has token ids outside the int64 range"),
    ("/detokenize", {"tokens": [1], "model": "no-such-model"}, 404, "does not exist"),
    ("/invocations", {"input": "hi"}, 400, "Expected one of: ['ChatCompletionRequest', "),
    ("/invocations", {"prompt": "hi", "max_tokens": 0}, 400, "'max_tokens' must be at least 1"),
    ("/invocations", {"messages": "hi"}, 400, "'messages' must be an array"),
    ("/adapters", {"name": "x"}, 400, "Both 'name' and 'src' must be provided."),
    ("/adapters", {"name": "x", "src": 3}, 400, "'src' must be a string"),
    ("/adapters", [], 400, "The request body must be a JSON object"),
])
async def test_bad_bodies_are_named_in_openai_errors(server: RunningServer, path, body, status,
                                                     fragment):
    got, _, answer = await call("POST", f"{server.url}{path}", body)
    assert got == status, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["code"] == status and fragment in answer["error"]["message"]


# ---- SageMaker ------------------------------------------------------------------------------


async def test_invocations_dispatch_on_the_body(server: RunningServer):
    status, _, chat = await call("POST", f"{server.url}/invocations",
                                 {"model": "a1", "messages": CHAT, "max_tokens": 3})
    assert status == 200 and chat["object"] == "chat.completion" and chat["model"] == "a1"
    status, _, completion = await call("POST", f"{server.url}/invocations",
                                       {"prompt": "hello", "max_tokens": 3, "temperature": 0})
    assert status == 200 and completion["object"] == "text_completion"
    assert completion["usage"]["completion_tokens"] == 3


async def test_sagemaker_adapter_routes_load_and_unload(server: RunningServer, server_adapters):
    url = server.url
    status, _, text = await call("POST", f"{url}/adapters",
                                 {"name": "sm", "src": str(server_adapters["extra"])})
    assert (status, text) == (200, "Success: LoRA adapter 'sm' added successfully")
    status, _, again = await call("POST", f"{url}/adapters",
                                  {"name": "sm", "src": str(server_adapters["extra"])})
    assert status == 400 and "has already been loaded" in again["error"]["message"]
    status, _, out = await call("POST", f"{url}/v1/completions",
                                {"model": "sm", "prompt": "hi", "max_tokens": 2})
    assert status == 200 and out["model"] == "sm"
    status, _, text = await call("DELETE", f"{url}/adapters/sm")
    assert (status, text) == (200, "Success: LoRA adapter 'sm' removed successfully")
    status, _, gone = await call("DELETE", f"{url}/adapters/sm")
    assert status == 404 and gone["error"]["message"] == "The lora adapter 'sm' cannot be found."


def test_adapter_routes_need_runtime_updating(server: RunningServer):
    from loraserve.entrypoints.openai.serving import OpenAIServing

    core = OpenAIServing(server.engine, ServerConfig(allow_runtime_lora_updating=False))
    for method, path, body in [("POST", "/adapters", {"name": "x", "src": "/x"}),
                               ("DELETE", "/adapters/a1", None)]:
        answer = server.call(core.handle(method, path, body))
        assert answer.status == 404


# ---- CORS -----------------------------------------------------------------------------------

PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


async def test_cors_defaults_allow_any_origin(server: RunningServer):
    status, headers, _ = await call("OPTIONS", f"{server.url}/v1/chat/completions",
                                    headers={"Origin": "https://anyone.example", **PREFLIGHT})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert headers["Access-Control-Allow-Headers"] == PREFLIGHT["Access-Control-Request-Headers"]
    status, headers, _ = await call("GET", f"{server.url}/v1/models",
                                    headers={"Origin": "https://anyone.example"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"


async def test_cors_preflight_from_allowed_and_disallowed_origins(proxied: RunningServer):
    url = f"{proxied.url}/llm/v1/chat/completions"
    status, headers, _ = await call("OPTIONS", url, headers={"Origin": ALLOWED, **PREFLIGHT})
    assert status == 200  # no API key needed for a preflight
    assert headers["Access-Control-Allow-Origin"] == ALLOWED and headers["Vary"] == "Origin"
    status, headers, body = await call("OPTIONS", url,
                                       headers={"Origin": "https://evil.example", **PREFLIGHT})
    assert status == 400 and "Access-Control-Allow-Origin" not in headers
    assert body["error"]["message"] == "Disallowed CORS origin 'https://evil.example'"
    # actual requests: the allowed origin is named (an error still tells the browser why)
    status, headers, _ = await call("GET", f"{proxied.url}/llm/v1/models", headers={
        "Origin": ALLOWED, "Authorization": f"Bearer {KEY}"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ALLOWED
    status, headers, _ = await call("GET", f"{proxied.url}/v1/models", headers={"Origin": ALLOWED})
    assert status == 401 and headers["Access-Control-Allow-Origin"] == ALLOWED
    status, headers, _ = await call("GET", f"{proxied.url}/v1/models", headers={
        "Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


# ---- --root-path, --response-role, --chat-template -------------------------------------------


async def test_root_path_serves_both_paths_and_keeps_the_key(proxied: RunningServer):
    auth = {"Authorization": f"Bearer {KEY}"}
    for prefix in ("/llm", ""):
        status, _, body = await call("GET", f"{proxied.url}{prefix}/v1/models/a1", headers=auth)
        assert status == 200 and body["id"] == "a1"
        status, _, _ = await call("GET", f"{proxied.url}{prefix}/v1/models")
        assert status == 401  # the prefix does not get around the key
        status, _, _ = await call("GET", f"{proxied.url}{prefix}/ping")
        assert status == 200  # as in vLLM, only /v1 needs the key
    status, _, _ = await call("GET", f"{proxied.url}/llmx/v1/models", headers=auth)
    assert status == 404


async def test_response_role_and_server_chat_template(proxied: RunningServer, hf_tokenizer):
    api = openai.AsyncOpenAI(base_url=f"{proxied.url}/llm/v1", api_key=KEY, max_retries=0)
    answer = await api.chat.completions.create(model="a1", messages=CHAT, max_tokens=2)
    assert answer.choices[0].message.role == "bot"
    stream = await api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=2, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "bot"
    # vLLM's rule: without a generation prompt the answer continues the last message's role
    bare = await api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=2,
                                             extra_body={"add_generation_prompt": False})
    assert bare.choices[0].message.role == "user"
    for generation_prompt, usage in ((True, answer.usage), (False, bare.usage)):
        rendered = hf_tokenizer.apply_chat_template(
            CHAT, chat_template=SERVER_TEMPLATE, tokenize=False,
            add_generation_prompt=generation_prompt)
        expected = hf_tokenizer(rendered, add_special_tokens=False).input_ids
        assert usage.prompt_tokens == len(expected)  # the server's template, not the model's
        _, _, tokenized = await call("POST", f"{proxied.url}/llm/tokenize", {
            "messages": CHAT, "add_generation_prompt": generation_prompt})
        assert tokenized["tokens"] == expected


def test_max_logprobs_bounds_every_logprobs_field(proxied: RunningServer):
    api = openai.OpenAI(base_url=f"{proxied.url}/v1", api_key=KEY, max_retries=0)
    assert api.completions.create(model=BASE, prompt="hi", max_tokens=1, logprobs=5).choices
    for call_ in (
        lambda: api.completions.create(model=BASE, prompt="hi", max_tokens=1, logprobs=6),
        lambda: api.completions.create(model=BASE, prompt="hi", max_tokens=1,
                                       extra_body={"prompt_logprobs": 6}),
        lambda: api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=1,
                                            logprobs=True, top_logprobs=6),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            call_()
        message = info.value.body["message"]
        assert "must be between 0 and 5, got 6" in message and "--max-logprobs" in message
