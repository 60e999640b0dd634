"""Llama 3's JSON format (vLLM's ``llama3_json``): the answer is one call,
``{"name": ..., "parameters": {...}}`` (or ``"arguments"``), or several separated by ``;``,
optionally after ``<|python_tag|>``. A JSON array of calls is read too."""

from __future__ import annotations

import json

from loraserve.entrypoints.openai.tool_parsers.base import ToolCall, ToolParser, calls_from_json

_PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        body = text.strip().removeprefix(_PYTHON_TAG).strip()
        if body[:1] not in ("{", "["):
            return text, []
        decoder = json.JSONDecoder()
        calls: list[ToolCall] = []
        at = 0
        while at < len(body):
            try:
                value, at = decoder.raw_decode(body, at)
            except ValueError:
                return text, []
            found = calls_from_json(value)
            if found is None:
                return text, []
            calls.extend(found)
            at = len(body) - len(body[at:].lstrip().removeprefix(";").lstrip())
        return None, calls

    def call_start(self, text: str) -> int | None:
        stripped = text.lstrip()
        if _PYTHON_TAG.startswith(stripped[: len(_PYTHON_TAG)]) or stripped.startswith(_PYTHON_TAG):
            return 0
        return super().call_start(text)
