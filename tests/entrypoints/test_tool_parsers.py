"""The tool-call parsers on texts in each model family's format, and where a stream must start
holding text back."""

from __future__ import annotations

import json

import pytest

from loraserve.entrypoints.openai.tool_parsers import TOOL_PARSERS, ToolCall, tool_parser


def test_hermes_reads_each_call_between_its_tags():
    text = ('Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    content, calls = tool_parser("hermes").extract(text)
    assert content == "Let me check."
    assert calls == [ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("get_time", "{}")]


def test_hermes_reads_smollm2s_array_and_an_unclosed_last_call():
    content, calls = tool_parser("hermes").extract(
        '<tool_call>[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]</tool_call>')
    assert content is None and [c.name for c in calls] == ["a", "b"]
    _, calls = tool_parser("hermes").extract('<tool_call>{"name": "a", "arguments": {"x": 1}}')
    assert json.loads(calls[0].arguments) == {"x": 1}


@pytest.mark.parametrize("text", [
    "no call here", "<tool_call>not json</tool_call>", '<tool_call>{"arguments": {}}</tool_call>',
    "<tool_call>[]</tool_call>",
])
def test_hermes_leaves_text_without_a_valid_call_as_content(text):
    content, calls = tool_parser("hermes").extract(text)
    assert calls == [] and content == (text if "[]" not in text else None)


def test_llama3_json_reads_one_or_several_calls():
    parser = tool_parser("llama3_json")
    _, calls = parser.extract('{"name": "f", "parameters": {"a": 1}}; {"name": "g", "arguments": {}}')
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 1}), ("g", {})]
    _, calls = parser.extract('<|python_tag|>{"name": "f", "parameters": {}}')
    assert calls == [ToolCall("f", "{}")]
    assert parser.extract("Hello there") == ("Hello there", [])
    assert parser.extract('{"name": "f", "parameters": {') == ('{"name": "f", "parameters": {', [])


def test_a_stream_holds_text_from_where_a_call_may_begin():
    hermes = tool_parser("hermes")
    assert hermes.call_start("Sure, ") is None
    assert hermes.call_start("Sure, <tool") == len("Sure, ")
    assert hermes.call_start("Sure, <tool_call>{") == len("Sure, ")
    json_calls = tool_parser("llama3_json")
    assert json_calls.call_start("Hello") is None and json_calls.call_start(' {"na') == 0


def test_an_unknown_parser_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="hermes"):
        tool_parser("nope")
    assert {"hermes", "llama3_json"} <= set(TOOL_PARSERS)
