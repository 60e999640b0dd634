"""Structured outputs and tool calling on the real demo model (SmolLM2-135M-Instruct) through
real clients: the `openai` SDK and LangChain. Every constrained answer is checked with
`jsonschema`, an independent validator; the base model and an adapter share the server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import jsonschema
import openai
import pytest
from openai_harness import RunningServer, post_json, start_in_thread
from pydantic import BaseModel, Field

MODEL = "SmolLM2-135M-Instruct"
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                           "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                      "required": ["city"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather",
                                            "description": "Get the current weather in a city",
                                            "parameters": WEATHER_PARAMETERS}}
# the same tool as SmolLM2's tuning data spells tools (what the 135M model answers best to)
PLAIN_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a city",
                                         "parameters": WEATHER_PARAMETERS}}
ASK_PERSON = [{"role": "user", "content": "Maria is 29 years old. Describe her as JSON."}]
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
# one earlier exchange in SmolLM2's tool format: the 135M model then calls tools on its own
FEW_SHOT = [
    {"role": "user", "content": "What is the weather in Berlin?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Berlin"}'}}]},
    {"role": "tool", "tool_call_id": "call_0", "content": "12 degrees, rain"},
    {"role": "assistant", "content": "It is 12 degrees and raining in Berlin."},
]


@pytest.fixture(scope="module")
def server(smollm2_demo) -> Iterator[RunningServer]:
    """The demo model plus its `json` adapter, with auto tool choice and SmolLM2's tool template."""
    from loraserve.demo import smollm2
    from loraserve.entrypoints.cli import build_parser, configs_from_args

    args = build_parser().parse_args([
        "serve", str(smollm2_demo.model), "--served-model-name", MODEL, "--enable-lora",
        "--lora-modules", f"json={smollm2_demo.adapter('json')}", "--port", "0",
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--chat-template", str(smollm2.TOOL_CHAT_TEMPLATE),
    ])
    running, stop = start_in_thread(*configs_from_args(args))
    try:
        yield running
    finally:
        stop()


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


# ---- structured outputs --------------------------------------------------------------------


async def test_json_schema_for_the_base_model_and_an_adapter_side_by_side(server: RunningServer):
    """Constrained rows of two models and a free row run together; each answer validates."""
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    constrained = [client.chat.completions.create(
        model=model, messages=ASK_PERSON, max_tokens=60, temperature=temperature, seed=1,
        response_format=response_format)
        for model in (MODEL, "json") for temperature in (0, 1.0)]
    free = client.chat.completions.create(model=MODEL, messages=ASK_PERSON, max_tokens=20,
                                          temperature=0)
    *answers, plain = await asyncio.gather(*constrained, free)
    for answer in answers:
        assert answer.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)
    assert plain.choices[0].message.content  # free text, whatever it says
    await client.close()


def test_the_openai_clients_parse_with_a_pydantic_model(client: openai.OpenAI):
    class Person(BaseModel):
        name: str = Field(max_length=40)
        age: int

    for model in (MODEL, "json"):
        answer = client.chat.completions.parse(model=model, messages=ASK_PERSON,
                                               response_format=Person, max_tokens=60, temperature=0)
        person = answer.choices[0].message.parsed
        assert isinstance(person, Person) and person.age >= 0


def test_json_object_regex_and_choice(client: openai.OpenAI):
    answer = client.chat.completions.create(model="json", messages=ASK_PERSON, max_tokens=120,
                                            temperature=0, response_format={"type": "json_object"})
    assert isinstance(json.loads(answer.choices[0].message.content), dict)
    phone = client.completions.create(model="json", prompt="Call me at", max_tokens=12,
                                      temperature=1.0, seed=3,
                                      extra_body={"structured_outputs": {"regex": r"\d{3}-\d{4}"}})
    assert re.fullmatch(r"\d{3}-\d{4}", phone.choices[0].text)
    for extra in ({"guided_choice": ["yes", "no"]}, {"structured_outputs": {"choice": ["yes", "no"]}}):
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Is the sky blue?"}], max_tokens=5,
            temperature=1.0, n=3, seed=5, extra_body=extra)
        assert {c.message.content for c in answer.choices} <= {"yes", "no"}


def test_a_streamed_answer_concatenates_to_valid_json(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="json", messages=ASK_PERSON, max_tokens=60, temperature=0, stream=True,
        extra_body={"guided_json": PERSON})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_langchain_with_structured_output_json_schema(server: RunningServer):
    from langchain_openai import ChatOpenAI

    class Person(BaseModel):
        name: str = Field(max_length=40)
        age: int

    for model in (MODEL, "json"):
        chat = ChatOpenAI(base_url=f"{server.url}/v1", api_key="unused", model=model,
                          temperature=0, max_tokens=60, max_retries=0)
        person = chat.with_structured_output(Person, method="json_schema").invoke(
            ASK_PERSON[0]["content"])
        assert isinstance(person, Person)


# ---- tools -----------------------------------------------------------------------------------


def _arguments(call) -> dict:  # noqa: ANN001 - an openai tool call
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    return arguments


def test_tool_choice_required_and_named_always_call_with_valid_arguments(client: openai.OpenAI):
    named = {"type": "function", "function": {"name": "get_time"}}
    for choice in ("required", named):
        for model in (MODEL, "json"):
            answer = client.chat.completions.create(
                model=model, messages=ASK_WEATHER, tools=[WEATHER, TIME], tool_choice=choice,
                parallel_tool_calls=False, max_tokens=80, temperature=0)
            message = answer.choices[0].message
            assert answer.choices[0].finish_reason == "tool_calls", message
            assert message.content is None and len(message.tool_calls) == 1
            call = message.tool_calls[0]
            assert call.type == "function" and call.id
            assert call.function.name in ("get_weather", "get_time")
            if choice is named:
                assert call.function.name == "get_time"
            _arguments(call)


def test_tool_choice_auto_calls_a_tool_when_the_prompt_needs_one(client: openai.OpenAI):
    answer = client.chat.completions.create(
        model=MODEL, messages=[*FEW_SHOT, *ASK_WEATHER], tools=[PLAIN_WEATHER], max_tokens=80,
        temperature=0)
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls", message
    assert [call.function.name for call in message.tool_calls] == ["get_weather"]
    assert _arguments(message.tool_calls[0]) == {"city": "Paris"}


def test_a_tool_result_continues_the_conversation(client: openai.OpenAI):
    first = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, max_tokens=80, temperature=0).choices[0].message
    call = first.tool_calls[0]
    answer = client.chat.completions.create(
        model=MODEL, tools=[WEATHER], max_tokens=40, temperature=0, messages=[
            *ASK_WEATHER, first.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "22 degrees and sunny"}])
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls


def test_tool_calls_stream_as_openai_streams_them(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="json", messages=ASK_WEATHER, tools=[WEATHER], parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=80,
        temperature=0, stream=True)
    calls: dict[int, dict] = {}
    finish_reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            finish_reasons.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or delta.id
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert finish_reasons[-1] == "tool_calls"
    assert list(calls) == [0] and calls[0]["id"] and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER_PARAMETERS)


def test_langchain_bind_tools_invoke(server: RunningServer):
    from langchain_openai import ChatOpenAI

    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    chat = ChatOpenAI(base_url=f"{server.url}/v1", api_key="unused", model="json",
                      temperature=0, max_tokens=80, max_retries=0)
    reply = chat.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Lisbon?")
    assert [call["name"] for call in reply.tool_calls] == ["get_weather"]
    assert isinstance(reply.tool_calls[0]["args"]["city"], str)
    auto = ChatOpenAI(base_url=f"{server.url}/v1", api_key="unused", model=MODEL, temperature=0,
                      max_tokens=80, max_retries=0).bind_tools([PLAIN_WEATHER])
    reply = auto.invoke([*FEW_SHOT, *ASK_WEATHER])  # tool_choice left out: "auto"
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("body, fragment", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                 "schema": {"type": "nonsense"}}}},
     "json constraint cannot be compiled"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "(?=a)b"}}}}, "json constraint cannot be compiled"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "'response_format.json_schema.schema' must be a JSON schema"),
    ({"structured_outputs": {"regex": "a(b"}}, "regex constraint cannot be compiled"),
    ({"structured_outputs": {"grammar": "start: nothing_defined"}}, "grammar constraint"),
    ({"guided_json": PERSON, "guided_regex": "a+"}, "only use one kind"),
    ({"response_format": {"type": "json_object"}, "guided_choice": ["a"]}, "Only one"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "'nope', which is not in 'tools'"),
    ({"tools": [{"type": "function"}], "tool_choice": "required"}, "'tools[0]'"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": ["x"]}},
     "'tool_choice' must be"),
    ({"guided_json": "{not json"}, "json constraint is not valid"),
    ({"structured_outputs": {"regex": "\ud800"}}, "regex constraint is not valid"),
    ({"structured_outputs": {"choice": []}}, "non-empty list of strings"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "cannot be combined"),
])
def test_bad_constraints_are_400s_and_the_server_keeps_serving(server: RunningServer, body,
                                                               fragment):
    status, text = post_json(f"{server.url}/v1/chat/completions",
                             {"model": MODEL, "messages": ASK_PERSON, "max_tokens": 5, **body})
    assert status == 400, text
    assert fragment in json.loads(text)["error"]["message"]
    status, text = post_json(f"{server.url}/v1/completions",
                             {"model": "json", "prompt": "Hi", "max_tokens": 2})
    assert status == 200, text


def test_auto_tool_choice_without_the_flags_is_vllms_400(llama_dir):
    from openai_harness import base_model_server

    with base_model_server(llama_dir) as running:
        status, text = post_json(f"{running.url}/v1/chat/completions", {
            "messages": ASK_WEATHER, "tools": [WEATHER], "max_tokens": 2})
    assert status == 400
    assert ('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser'
            in json.loads(text)["error"]["message"])
