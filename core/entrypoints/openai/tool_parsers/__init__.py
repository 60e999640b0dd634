"""Tool-call parsers for ``tool_choice: "auto"``, chosen at start-up by name
(``--tool-call-parser NAME``, vLLM's names): each finds the calls a model wrote in its own
format and says where, in a growing text, a call may begin (streaming holds text from there)."""

from __future__ import annotations

from loraserve.entrypoints.openai.tool_parsers.base import ToolCall, ToolParser
from loraserve.entrypoints.openai.tool_parsers.hermes import HermesToolParser
from loraserve.entrypoints.openai.tool_parsers.json_calls import Llama3JsonToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
}

__all__ = ["TOOL_PARSERS", "ToolCall", "ToolParser", "tool_parser"]


def tool_parser(name: str) -> ToolParser:
    """The parser called ``name``; a ValueError listing the known names otherwise."""
    if name not in TOOL_PARSERS:
        raise ValueError(f"invalid tool call parser: {name} (choose from "
                         f"{{ {', '.join(sorted(TOOL_PARSERS))} }})")
    return TOOL_PARSERS[name]()
