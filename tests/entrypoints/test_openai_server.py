"""The server through the official ``openai`` client: models, completions, chat, streaming,
runtime adapters and resolvers; greedy outputs must equal the offline ``LLM``'s."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import openai
import pytest
from openai_harness import BASE, RunningServer, http, post_json, stream_lines

from loraserve import LLM, SamplingParams
from loraserve.lora.request import LoRARequest

PROMPT = "the quick brown fox"
MAX_TOKENS = 12


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def aclient(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def offline(llama_dir: Path, server_adapters: dict[str, Path]):
    """Greedy reference texts from the offline LLM, keyed by model name."""
    llm = LLM(str(llama_dir), enable_lora=True, max_loras=3, max_cpu_loras=3)
    names = ["a1", "a2", "r1"]
    loras = [None] + [LoRARequest(n, i + 1, str(server_adapters[n])) for i, n in enumerate(names)]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    outs = llm.generate([PROMPT] * len(loras), params, lora_request=loras)
    chat_prompt = llm.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    chat_ids = llm.get_tokenizer().encode(chat_prompt, add_special_tokens=False)
    chat_outs = llm.generate(
        [{"prompt_token_ids": chat_ids}] * len(loras), params, lora_request=loras
    )
    keys = [BASE, *names]
    return {
        "completion": {k: o.outputs[0].text for k, o in zip(keys, outs)},
        "chat": {k: o.outputs[0].text for k, o in zip(keys, chat_outs)},
    }


def test_models_list_shows_lineage(server: RunningServer, server_adapters):
    models = {m.id: m for m in client(server).models.list().data}
    assert {BASE, "a1", "a2"} <= set(models)
    base = models[BASE].model_dump()
    assert base["parent"] is None and base["object"] == "model" and base["max_model_len"] > 0
    for name in ("a1", "a2"):
        card = models[name].model_dump()
        assert card["parent"] == BASE
        assert card["root"] == str(server_adapters[name])
        assert card["owned_by"] and isinstance(card["created"], int)


async def test_base_and_two_adapters_batched_equal_offline(server: RunningServer, offline):
    api = aclient(server)
    models = [BASE, "a1", "a2"]
    completions = [api.completions.create(model=m, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                          temperature=0) for m in models]
    chats = [api.chat.completions.create(model=m, messages=[{"role": "user", "content": "hello"}],
                                         max_tokens=MAX_TOKENS, temperature=0) for m in models]
    results = await asyncio.gather(*completions, *chats)
    for model, result in zip(models, results[:3]):
        assert result.model == model
        assert result.choices[0].text == offline["completion"][model]
        assert result.usage.completion_tokens == MAX_TOKENS or result.choices[0].finish_reason == "stop"
    for model, result in zip(models, results[3:]):
        assert result.choices[0].message.role == "assistant"
        assert result.choices[0].message.content == offline["chat"][model]
    texts = {r.choices[0].text for r in results[:3]}
    assert len(texts) == 3, "base and adapters should differ"


def test_completion_streaming_matches_whole(server: RunningServer, offline):
    api = client(server)
    stream = api.completions.create(model="a2", prompt=PROMPT, max_tokens=MAX_TOKENS,
                                    temperature=0, stream=True,
                                    stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == offline["completion"]["a2"]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] in ("stop", "length") and all(f is None for f in finish[:-1])


def test_chat_streaming(server: RunningServer, offline):
    stream = client(server).chat.completions.create(
        model="a1", messages=[{"role": "user", "content": "hello"}], max_tokens=MAX_TOKENS,
        temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == offline["chat"]["a1"]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_sse_wire_format_ends_with_done(server: RunningServer):
    body = {"model": BASE, "prompt": PROMPT, "max_tokens": 3, "stream": True}
    headers, lines = stream_lines(f"{server.url}/v1/completions", body)
    assert headers["Content-Type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_n_seed_stop_and_multiple_prompts(server: RunningServer, offline):
    api = client(server)
    many = api.completions.create(model=BASE, prompt=[PROMPT, "hello world"], max_tokens=4,
                                  temperature=0.8, seed=7, n=2, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]
    again = api.completions.create(model=BASE, prompt=[PROMPT, "hello world"], max_tokens=4,
                                   temperature=0.8, seed=7, n=2, extra_body={"ignore_eos": True})
    assert [c.text for c in many.choices] == [c.text for c in again.choices]
    assert many.usage.completion_tokens == 16
    reference = offline["completion"][BASE]
    stop = reference[3:6]
    cut = api.completions.create(model=BASE, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                 temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].text and reference.startswith(cut.choices[0].text)
    extra = api.completions.create(model=BASE, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                   temperature=0, extra_body={"top_k": 5, "ignore_eos": True,
                                                              "no_such_field": 1})
    assert extra.usage.completion_tokens == MAX_TOKENS


def test_token_id_prompt(server: RunningServer, offline):
    ids = server.engine.tokenizer.encode(PROMPT)
    out = client(server).completions.create(model="a1", prompt=ids, max_tokens=MAX_TOKENS,
                                            temperature=0)
    assert out.choices[0].text == offline["completion"]["a1"]


def test_resolver_loads_unknown_adapter_on_first_use(server: RunningServer, offline):
    api = aclient(server)

    async def many():
        return await asyncio.gather(*[
            api.completions.create(model="r1", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
            for _ in range(3)
        ])

    results = asyncio.run(many())
    assert {r.choices[0].text for r in results} == {offline["completion"]["r1"]}
    card = next(m for m in client(server).models.list().data if m.id == "r1").model_dump()
    assert card["parent"] == BASE


def test_resolver_found_but_corrupt_adapter_is_a_400(server: RunningServer, server_adapters):
    import shutil

    broken = server_adapters["r1"].parent / "broken"
    shutil.copytree(server_adapters["r1"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(openai.BadRequestError, match="'broken': was found but could not be loaded"):
        client(server).completions.create(model="broken", prompt=PROMPT, max_tokens=2)
    ok = client(server).completions.create(model=BASE, prompt=PROMPT, max_tokens=2)
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_load_and_unload_round_trip(server: RunningServer, server_adapters):
    import json

    api = client(server)
    url = server.url
    status, text = post_json(f"{url}/v1/load_lora_adapter",
                             {"lora_name": "extra", "lora_path": str(server_adapters["extra"])})
    assert status == 200, text
    assert text == "Success: LoRA adapter 'extra' added successfully"
    assert "extra" in {m.id for m in api.models.list().data}
    assert api.completions.create(model="extra", prompt=PROMPT, max_tokens=2).choices
    status, text = post_json(f"{url}/v1/load_lora_adapter",
                             {"lora_name": "extra", "lora_path": str(server_adapters["extra"])})
    assert status == 400 and "already been loaded" in json.loads(text)["error"]["message"]
    status, text = post_json(f"{url}/v1/unload_lora_adapter", {"lora_name": "extra"})
    assert status == 200
    assert text == "Success: LoRA adapter 'extra' removed successfully"
    assert "extra" not in {m.id for m in api.models.list().data}
    with pytest.raises(openai.NotFoundError, match="extra"):
        api.completions.create(model="extra", prompt=PROMPT, max_tokens=2)
    status, text = post_json(f"{url}/v1/unload_lora_adapter", {"lora_name": "extra"})
    assert status == 404 and json.loads(text)["error"]["code"] == 404


def test_unload_lets_in_flight_requests_finish(server: RunningServer, server_adapters):
    api = client(server)
    post_json(f"{server.url}/v1/load_lora_adapter",
              {"lora_name": "busy", "lora_path": str(server_adapters["extra"])})
    stream = api.completions.create(model="busy", prompt=PROMPT, max_tokens=40, temperature=0,
                                    stream=True, extra_body={"ignore_eos": True})
    first = next(iter(stream))
    status, _ = post_json(f"{server.url}/v1/unload_lora_adapter", {"lora_name": "busy"})
    assert status == 200
    rest = list(stream)
    assert rest[-1].choices[0].finish_reason == "length"
    assert first.choices[0].text is not None
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="busy", prompt=PROMPT, max_tokens=2)


def _idle(server: RunningServer, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.engine.engine.has_unfinished_requests():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def slow_steps(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each engine step takes >= 20 ms, so 200 tokens need ~4 s on any machine: a request
    gone idle within 2 s was aborted, not finished."""
    engine = server.engine.engine
    step = engine.step

    def slow_step():
        time.sleep(0.02)
        return step()

    monkeypatch.setattr(engine, "step", slow_step)


def test_client_disconnect_mid_stream_frees_the_sequence(server: RunningServer, slow_steps):
    body = {"model": "a1", "prompt": PROMPT, "max_tokens": 200, "stream": True,
            "ignore_eos": True}
    _, lines = stream_lines(f"{server.url}/v1/completions", body, stop_after=1)
    assert lines[0].startswith("data: {")  # one chunk, then hang up
    assert _idle(server, timeout=2.0)
    assert _gauges_settle(server, {"loraserve_running_requests": 0.0, "loraserve_queue_length": 0.0})


def _gauges_settle(server: RunningServer, expected: dict[str, float], timeout: float = 2.0) -> bool:
    """The /metrics gauges reach ``expected`` (they are published by the step thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, text = http("GET", f"{server.url}/metrics")
        samples = [line.rsplit(None, 1) for line in text.splitlines()
                   if line and not line.startswith("#")]  # label values may hold spaces
        values = {name: float(value) for name, value in samples}
        if all(values.get(name) == value for name, value in expected.items()):
            return True
        time.sleep(0.05)
    return False


def test_client_timeout_on_whole_response_frees_the_sequence(server: RunningServer, slow_steps):
    body = {"model": BASE, "prompt": PROMPT, "max_tokens": 200, "ignore_eos": True}
    with pytest.raises(TimeoutError):
        post_json(f"{server.url}/v1/completions", body, timeout=0.3)
    assert _idle(server, timeout=2.0)


def test_metrics_and_health(server: RunningServer):
    client(server).completions.create(model="a1", prompt=PROMPT, max_tokens=2)
    assert http("GET", f"{server.url}/health")[0] == 200
    status, headers, text = http("GET", f"{server.url}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("loraserve_requests_total", "loraserve_time_to_first_token_seconds",
                 "loraserve_queue_length", "loraserve_lora_loads_total",
                 "loraserve_http_requests_total", "loraserve_prompt_tokens_total"):
        assert name in text, name
    assert 'model="a1"' in text


def test_every_metric_is_listed_in_the_server_docs():
    from pathlib import Path

    from loraserve import metrics

    docs = " ".join((Path(__file__).parents[2] / "docs" / "server.md").read_text().split())
    names = {family.name for family in metrics.REGISTRY.collect()}
    assert names and all(f"`{name}`" in docs for name in names), names


def test_prompts_are_tokenized_off_the_event_loop(server: RunningServer, monkeypatch):
    """A huge prompt must not stall other requests: encoding and chat rendering run on the
    tokenizer thread, never on the server's event loop thread."""
    tokenizer = server.engine.tokenizer
    threads: list[str] = []
    for name in ("encode", "apply_chat_template"):
        original = getattr(tokenizer, name)

        def spy(*args, _original=original, **kwargs):
            threads.append(threading.current_thread().name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(tokenizer, name, spy)
    api = client(server)
    api.completions.create(model=BASE, prompt=PROMPT, max_tokens=1)
    api.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    assert len(threads) == 3  # the prompt; the chat's rendering and its encoding
    assert all(name.startswith("loraserve-tokenizer") for name in threads), threads
