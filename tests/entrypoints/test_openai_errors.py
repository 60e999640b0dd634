"""Every error the server answers: status, OpenAI-shaped body, and a message naming the cause."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai_harness import BASE, RunningServer, http, start_in_thread

from loraserve.testing import make_adapter

API_KEY = "sekret"


def error_of(status_text: tuple[int, dict, str]) -> tuple[int, dict]:
    status, _, text = status_text
    body = json.loads(text)
    assert set(body["error"]) >= {"message", "type", "code"}, body
    assert body["error"]["code"] == status
    return status, body["error"]


def post(server: RunningServer, path: str, body, **kw) -> tuple[int, dict]:  # noqa: ANN001
    return error_of(http("POST", f"{server.url}{path}", body, **kw))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": BASE}, "'prompt' is required"),
        ({"model": BASE, "prompt": 42}, "'prompt'"),
        ({"model": BASE, "prompt": "hi", "max_tokens": "ten"}, "'max_tokens' must be an integer"),
        ({"model": BASE, "prompt": "hi", "max_tokens": -3}, "'max_tokens' must be at least 1"),
        ({"model": BASE, "prompt": "hi", "temperature": "hot"}, "'temperature' must be a number"),
        ({"model": BASE, "prompt": "hi", "temperature": -1}, "temperature must be >= 0"),
        ({"model": BASE, "prompt": "hi", "top_p": 0}, "top_p"),
        ({"model": BASE, "prompt": "hi", "n": 0}, "'n' must be between 1 and 128"),
        ({"model": BASE, "prompt": "hi", "n": 100_000}, "'n' must be between 1 and 128"),
        ({"model": BASE, "prompt": "hi", "stream_options": {"include_usage": True}},
         "Stream options can only be defined when `stream=True`."),
        ({"model": BASE, "prompt": "hi", "stop_token_ids": ["x"]}, "'stop_token_ids' must be"),
        ({"model": BASE, "prompt": "hi", "stream": "yes"}, "'stream' must be a boolean"),
        ({"model": BASE, "prompt": "hi", "stop": [1]}, "'stop'"),
        ({"model": 7, "prompt": "hi"}, "'model' must be a string"),
        ({"model": BASE, "prompt": "word " * 400}, "maximum context length"),
        ([1, 2], "JSON object"),
    ],
)
def test_completion_bad_requests_are_400(server: RunningServer, body, fragment):  # noqa: ANN001
    status, err = post(server, "/v1/completions", body)
    assert status == 400 and err["type"] == "BadRequestError"
    assert fragment in err["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": BASE}, "'messages' is required"),
        ({"model": BASE, "messages": "hi"}, "'messages' must be an array"),
        ({"model": BASE, "messages": [{"content": "hi"}]}, "role"),
        ({"model": BASE, "messages": [{"role": "user", "content": 5}]}, "content"),
        ({"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
         "'max_tokens' must be at least 1"),
        ({"model": BASE, "messages": [{"role": "user", "content": "hi"}],
          "max_completion_tokens": -3}, "'max_completion_tokens' must be at least 1"),
    ],
)
def test_chat_bad_requests_are_400(server: RunningServer, body, fragment):  # noqa: ANN001
    status, err = post(server, "/v1/chat/completions", body)
    assert status == 400 and fragment in err["message"]


def test_malformed_json_is_400(server: RunningServer):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{server.url}/v1/completions", data=b"{not json",
                                     method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    body = json.loads(info.value.read())
    assert info.value.code == 400 and "Malformed JSON" in body["error"]["message"]


def test_unknown_model_is_404_naming_it_through_openai(server: RunningServer):
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        api.completions.create(model="no-such-adapter", prompt="hi", max_tokens=2)
    assert "no-such-adapter" in str(info.value)
    with pytest.raises(openai.NotFoundError, match="no-such-adapter"):
        api.chat.completions.create(model="no-such-adapter", max_tokens=2,
                                    messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError, match="no-such-adapter"):
        api.completions.create(model="no-such-adapter", prompt="hi", max_tokens=2, stream=True)


def test_unknown_route_is_json_404(server: RunningServer):
    status, err = error_of(http("GET", f"{server.url}/v1/nothing-here"))
    assert status == 404


def test_load_and_unload_validation(server: RunningServer, tmp_path: Path, llama_dir: Path):
    status, err = post(server, "/v1/load_lora_adapter", {"lora_name": "x"})
    assert status == 400 and "Both 'lora_name' and 'lora_path' must be provided." == err["message"]
    status, err = post(server, "/v1/load_lora_adapter",
                       {"lora_name": "x", "lora_path": str(tmp_path / "missing")})
    assert status == 404 and "missing" in err["message"]
    too_big = make_adapter(llama_dir, tmp_path / "big", rank=32, seed=5)
    status, err = post(server, "/v1/load_lora_adapter", {"lora_name": "big", "lora_path": str(too_big)})
    assert status == 400 and "big" in err["message"]
    status, err = post(server, "/v1/load_lora_adapter", {"lora_name": "a1", "lora_path": str(too_big)})
    assert status == 400 and err["message"] == "The lora adapter 'a1' has already been loaded."
    status, err = post(server, "/v1/unload_lora_adapter", {})
    assert status == 400 and "lora_name" in err["message"]
    status, err = post(server, "/v1/unload_lora_adapter", {"lora_name": "ghost"})
    assert status == 404 and err["message"] == "The lora adapter 'ghost' cannot be found."
    status, err = post(server, "/v1/unload_lora_adapter", {"lora_int_id": 99999})
    assert status == 404


# ---- a locked-down server: API key, no runtime updating, no chat template ---------------------


@pytest.fixture(scope="module")
def strict_server(llama_dir: Path, server_adapters: dict[str, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from loraserve.config import EngineConfig
    from loraserve.entrypoints.openai.server_config import LoRAModulePath, ServerConfig
    from loraserve.plugins import reset_plugin_manager

    model = tmp_path_factory.mktemp("no_template") / "model"
    shutil.copytree(llama_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")
        env.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", str(server_adapters["r1"].parent))
        env.delenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
        reset_plugin_manager()
        running, stop = start_in_thread(
            EngineConfig(model=str(model), served_model_name=BASE, enable_lora=True),
            ServerConfig(port=0, api_key=API_KEY,
                         lora_modules=[LoRAModulePath("a1", str(server_adapters["a1"]))]),
        )
        try:
            yield running
        finally:
            stop()
            reset_plugin_manager()


def test_api_key_required_on_v1_routes(strict_server: RunningServer):
    url = f"{strict_server.url}/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    status, err = error_of(http("GET", f"{url}/models"))
    assert status == 401
    status, err = post(strict_server, "/v1/completions", {"model": BASE, "prompt": "hi"})
    assert status == 401
    ok = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0)
    assert {m.id for m in ok.models.list().data} == {BASE, "a1"}
    assert ok.completions.create(model="a1", prompt="hi", max_tokens=2).choices
    assert http("GET", f"{strict_server.url}/health")[0] == 200
    assert http("GET", f"{strict_server.url}/metrics")[0] == 200


def test_runtime_endpoints_absent_and_resolvers_off(strict_server: RunningServer):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        status, _ = error_of(http("POST", f"{strict_server.url}{path}",
                                  {"lora_name": "r1", "lora_path": "/x"}, headers=auth))
        assert status == 404
    # r1 sits in the resolver dir, but without runtime updating nothing resolves it
    api = openai.OpenAI(base_url=f"{strict_server.url}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="r1"):
        api.completions.create(model="r1", prompt="hi", max_tokens=2)


def test_chat_without_template_is_400(strict_server: RunningServer):
    api = openai.OpenAI(base_url=f"{strict_server.url}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="chat template"):
        api.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("route, body", [
    ("/v1/completions", {"prompt": "x" * 3_000_000}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 3_000_000}]}),
])
def test_huge_prompt_is_refused_without_tokenizing_it(server: RunningServer, monkeypatch, route, body):
    tokenizer = server.engine.tokenizer
    calls = []
    monkeypatch.setattr(tokenizer, "encode", lambda *a, **k: calls.append(1) or [])
    status, error = post(server, route, {"model": BASE, **body})
    assert status == 400 and "characters, more than that many tokens can hold" in error["message"]
    assert "maximum context length is" in error["message"] and not calls


@pytest.mark.parametrize("value", [b"Bearer \xff\xfe", "Bearer sékret".encode(), b"\xe9",
                                   b"Bearer \xed\xa0\x80"])
def test_non_ascii_authorization_header_is_401(strict_server: RunningServer, value: bytes):
    """Header bytes that are not ASCII (or not UTF-8) are a wrong key, not an encoding error."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(strict_server.url)
    body = json.dumps({"model": BASE, "prompt": "hi"}).encode()
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Authorization: " + value + b"\r\nContent-Length: " + str(len(body)).encode()
               + b"\r\nConnection: close\r\n\r\n" + body)
    with socket.create_connection((url.hostname, url.port), timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer[:300]
    assert json.loads(payload)["error"]["type"] == "AuthenticationError"
