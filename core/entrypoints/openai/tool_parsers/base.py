"""What every tool-call parser gives: the calls in a finished text, and the content around
them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolParser:
    """Finds tool calls in a model's text. ``start`` is the marker a call begins with (None:
    a call is the whole text, a JSON value)."""

    start: str | None = None

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The content left (None if empty) and the calls; no calls if the text has none or
        they do not parse (the text is then all content, as vLLM returns it)."""
        raise NotImplementedError

    def call_start(self, text: str) -> int | None:
        """Where in a partial text a call begins or may begin (a prefix of the marker at the
        end counts); None: all of it is content so far."""
        if self.start is None:
            stripped = text.lstrip()
            return 0 if stripped[:1] in ("{", "[") or not stripped else None
        if (at := text.find(self.start)) >= 0:
            return at
        for size in range(min(len(self.start) - 1, len(text)), 0, -1):
            if text.endswith(self.start[:size]):
                return len(text) - size
        return None


def calls_from_json(value: Any) -> list[ToolCall] | None:
    """``{"name", "arguments"|"parameters"}`` or a list of them, as ToolCalls; None if the value
    is not that shape."""
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)):
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):  # already JSON text
            try:
                json.loads(arguments)
            except ValueError:
                return None
        else:
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(ToolCall(item["name"], arguments))
    return calls
