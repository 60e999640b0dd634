"""Tool calling: which tools a chat request offers, how its ``tool_choice`` is decoded, and
the calls read back from the text.

``"required"`` and a named function are decoded under a JSON schema built from the tools'
parameters, so the arguments always parse; ``"auto"`` lets the model choose and reads its
calls with the server's ``--tool-call-parser``; ``"none"`` only shows the tools to the
template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loraserve.entrypoints.openai.refusals import AUTO_TOOLS
from loraserve.entrypoints.openai.request_values import show
from loraserve.entrypoints.openai.streaming import random_id
from loraserve.entrypoints.openai.tool_parsers import ToolCall, ToolParser
from loraserve.errors import InvalidRequestError
from loraserve.sampling_params import StructuredOutputsParams

_ANY_OBJECT = {"type": "object"}


@dataclass
class ToolChoice:
    """A request's tools and what it asks of them: ``mode`` is none, auto, required or named
    (``name`` says which function)."""

    tools: list[dict[str, Any]]
    mode: str
    name: str | None = None
    parallel: bool = True

    @property
    def constrained(self) -> bool:
        return self.mode in ("required", "named")

    def structured_outputs(self) -> StructuredOutputsParams | None:
        """The schema ``required`` and named calls are decoded under."""
        if self.mode == "named":
            return StructuredOutputsParams(json=self._parameters(self.name))
        if self.mode != "required":
            return None
        calls = {"type": "array", "minItems": 1, "items": {"anyOf": [
            {"type": "object", "properties": {"name": {"const": name},
                                              "parameters": self._parameters(name)},
             "required": ["name", "parameters"], "additionalProperties": False}
            for name in self._names()]}}
        if not self.parallel:
            calls["maxItems"] = 1
        return StructuredOutputsParams(json=calls)

    def calls(self, text: str, parser: ToolParser | None) -> tuple[str | None, list[ToolCall]]:
        """The content and the calls in a finished choice's text."""
        if self.mode == "named":
            return None, [ToolCall(self.name, text)]
        if self.mode == "required":
            try:
                return None, [ToolCall(c["name"], json.dumps(c["parameters"], ensure_ascii=False))
                              for c in json.loads(text)]
            except (ValueError, KeyError, TypeError):  # cut short (max_tokens): no calls
                return text, []
        if self.mode == "auto" and parser is not None:
            return parser.extract(text)
        return text, []

    def _names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.tools]

    def _parameters(self, name: str | None) -> dict[str, Any]:
        for tool in self.tools:
            if tool["function"]["name"] == name:
                return tool["function"].get("parameters") or _ANY_OBJECT
        raise AssertionError(name)


def tool_choice(tools: list[dict] | None, choice: Any, parallel: bool | None,
                auto_enabled: bool) -> ToolChoice | None:
    """The request's tools and choice, checked as vLLM checks them; None without tools."""
    if choice is not None and not tools and choice != "none":
        raise InvalidRequestError("When using `tool_choice`, `tools` must be set.",
                                  param="tool_choice")
    if not tools:
        return None
    for index, tool in enumerate(tools):
        function = tool.get("function")
        if (tool.get("type", "function") != "function" or not isinstance(function, dict)
                or not isinstance(function.get("name"), str) or not function["name"]):
            raise InvalidRequestError(
                f"'tools[{index}]' must be {{\"type\": \"function\", \"function\": {{\"name\": "
                f"..., \"parameters\": {{...}}}}}}, got {show(tool)}", param=f"tools[{index}]")
        if not isinstance(function.get("parameters", {}) or {}, dict):
            raise InvalidRequestError(f"'tools[{index}].function.parameters' must be a JSON "
                                      "schema object", param=f"tools[{index}]")
    names = [tool["function"]["name"] for tool in tools]
    if choice is None:
        choice = "auto"  # OpenAI's default when tools are given
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise InvalidRequestError("'tool_choice' must be 'none', 'auto', 'required' or "
                                      "{\"type\": \"function\", \"function\": {\"name\": ...}}, "
                                      f"got {show(choice)}", param="tool_choice")
        if name not in names:
            raise InvalidRequestError(f"'tool_choice' names the function {name!r}, which is not "
                                      f"in 'tools' ({', '.join(names)})", param="tool_choice")
        return ToolChoice(tools, "named", name, parallel is not False)
    if choice not in ("none", "auto", "required"):
        raise InvalidRequestError("'tool_choice' must be 'none', 'auto', 'required' or a named "
                                  f"function, got {show(choice)}", param="tool_choice")
    if choice == "auto" and not auto_enabled:
        raise InvalidRequestError(AUTO_TOOLS, param="tool_choice")
    return ToolChoice(tools, choice, None, parallel is not False)


def tool_reader(choice: ToolChoice | None, parser: ToolParser | None) -> ToolReader | None:
    """None when the answer is plain text (no tools, or tool_choice "none")."""
    if choice is None or choice.mode == "none":
        return None
    return ToolReader(choice, parser)


def message_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """OpenAI's ``tool_calls`` of a message."""
    return [{"id": random_id("chatcmpl-tool"), "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}} for call in calls]


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool calls with their arguments as objects, as chat templates read them
    (vLLM does the same); arguments that are not JSON stay text."""
    rendered = []
    for message in messages:
        if message.get("tool_calls"):
            message = {**message, "tool_calls": [_call_for_template(c)
                                                 for c in message["tool_calls"]]}
        rendered.append(message)
    return rendered


def _call_for_template(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    return {**call, "function": {**function, "arguments": arguments}}


@dataclass
class ToolReader:
    """Reads one request's choices for tool calls: what a stream may show while a choice
    runs, and the calls once it finished."""

    choice: ToolChoice
    parser: ToolParser | None

    def shown(self, text: str) -> str:
        """The part of a running choice's text that is surely content (a call is held back
        until it is complete)."""
        if self.choice.constrained:
            return ""
        start = self.parser.call_start(text) if self.parser is not None else None
        return text if start is None else text[:start]

    def finish(self, text: str, finish_reason: str | None) -> tuple[str | None, list[ToolCall]]:
        """The content and calls of a finished choice; a choice cut short has no calls."""
        if finish_reason != "stop":
            return text, []
        return self.choice.calls(text, self.parser)
