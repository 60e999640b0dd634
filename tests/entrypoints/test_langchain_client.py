"""LangChain's OpenAI chat model against a live server: plain chat works, and the two agent
features loraserve does not have yet (tool calling, structured output) get a 400 naming
the field instead of free text with a 200."""

from __future__ import annotations

import pytest
from openai_harness import BASE, RunningServer

langchain_openai = pytest.importorskip("langchain_openai")


def chat_model(server: RunningServer, model: str = BASE):  # noqa: ANN201
    return langchain_openai.ChatOpenAI(base_url=f"{server.url}/v1", api_key="unused", model=model,
                                       temperature=0, max_tokens=8, max_retries=0)


def test_plain_chat_works_for_the_base_and_an_adapter(server: RunningServer):
    for model in (BASE, "a1"):
        reply = chat_model(server, model).invoke("Say hello.")
        assert isinstance(reply.content, str) and reply.response_metadata["finish_reason"]


def test_bind_tools_is_a_400_naming_tools(server: RunningServer):
    import openai

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    with pytest.raises(openai.BadRequestError) as refused:
        chat_model(server).bind_tools([get_weather]).invoke("Weather in Lisbon?")
    assert refused.value.status_code == 400
    assert "tool" in str(refused.value).lower()


def test_with_structured_output_is_a_400_not_free_text(server: RunningServer):
    import openai
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    for method, field in (("json_schema", "response_format"), ("json_mode", "response_format"),
                          ("function_calling", "tool")):
        with pytest.raises(openai.BadRequestError) as refused:
            chat_model(server).with_structured_output(Person, method=method).invoke(
                "Maria is 29.")
        assert refused.value.status_code == 400, method
        assert field in str(refused.value), (method, str(refused.value))
