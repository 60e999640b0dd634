"""Hermes' format (Qwen2/Qwen3 and Hermes chat templates): each call a JSON object between
``<tool_call>`` and ``</tool_call>``. A JSON array of calls between the tags (what SmolLM2 was
tuned to write) is read too."""

from __future__ import annotations

import json
import re

from loraserve.entrypoints.openai.tool_parsers.base import ToolCall, ToolParser, calls_from_json

_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


class HermesToolParser(ToolParser):
    start = "<tool_call>"

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        at = text.find(self.start)
        if at < 0:
            return text, []
        calls: list[ToolCall] = []
        for body in _CALL.findall(text[at:]):
            try:
                found = calls_from_json(json.loads(body))
            except ValueError:
                found = None
            if found is None:
                return text, []
            calls.extend(found)
        if not calls:  # "<tool_call>[]</tool_call>": no call was needed
            return text[:at] or None, []
        return text[:at] or None, calls
