"""LangChain's OpenAI chat model against a live server: plain chat works, and tools on a
server started without auto tool choice get vLLM's 400 instead of free text with a 200.
Structured output and tool calls through LangChain: test_structured_outputs.py."""

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


def test_bind_tools_without_auto_tool_choice_is_vllms_400(server: RunningServer):
    """bind_tools leaves tool_choice out ("auto"), which needs --enable-auto-tool-choice: a 400
    that says so, not free text with a 200 (tests/entrypoints/test_structured_outputs.py has
    the calls made on a server with the flags)."""
    import openai

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    with pytest.raises(openai.BadRequestError) as refused:
        chat_model(server).bind_tools([get_weather]).invoke("Weather in Lisbon?")
    assert refused.value.status_code == 400
    assert "--enable-auto-tool-choice" in str(refused.value)
