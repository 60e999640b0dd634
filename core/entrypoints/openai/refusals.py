"""Request fields of OpenAI's and vLLM's bodies that loraserve does not implement: each is a
400 that names it, unless it carries its no-op value (``null``, ``false``, vLLM's default).

One table per route; docs/server.md lists the same fields. Fields that would change the
answer are never silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loraserve.errors import InvalidRequestError

# vLLM's words for a tool-calling request to a server without a tool parser
AUTO_TOOLS = ('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
              "to be set")
BACKEND = "is not supported: structured outputs always use llguidance"


@dataclass(frozen=True)
class Refusal:
    field: str
    message: str  # what the user reads after the field's name
    harmless: Callable[[Any], bool] = lambda value: value is None  # the no-op values


def _is(*values: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or any(
        value is v or (type(value) is type(v) and value == v) for v in values)


_SHARED = [
    Refusal("use_beam_search", "beam search is not supported", _is(False)),
    Refusal("length_penalty", "applies to beam search, which is not supported", _is(1, 1.0)),
    Refusal("allowed_token_ids", "is not supported"),
    Refusal("logits_processors", "is not supported (no --logits-processor-pattern)"),
    Refusal("return_tokens_as_token_ids", "is not supported", _is(False)),
    Refusal("spaces_between_special_tokens", "is not supported", _is(True)),
    Refusal("structural_tag", "is not supported (structured outputs take json, regex, choice "
            "or grammar)"),
    Refusal("guided_decoding_backend", BACKEND, _is("auto", "guidance", "llguidance")),
    Refusal("guided_whitespace_pattern", "is not supported"),
    Refusal("priority", "needs priority scheduling, which this server does not have", _is(0)),
    Refusal("request_id", "is not supported; the server names each request"),
    Refusal("cache_salt", "is not supported (no prefix cache)"),
    Refusal("kv_transfer_params", "is not supported (no disaggregated serving)"),
    Refusal("vllm_xargs", "is not supported"),
    Refusal("mm_processor_kwargs", "is not supported (text-only models)"),
    Refusal("media_io_kwargs", "is not supported (text-only models)"),
    Refusal("thinking_token_budget", "is not supported"),
]

COMPLETION = [
    *_SHARED,
    Refusal("best_of", "is not supported; use 'n' for several completions", _is(1)),
    Refusal("suffix", "is not supported", _is("")),
    Refusal("prompt_embeds", "is not supported"),
]

CHAT = [
    *_SHARED,
    Refusal("functions", "is deprecated by OpenAI and not supported; use 'tools'"),
    Refusal("function_call", "is deprecated by OpenAI and not supported; use 'tool_choice'",
            _is("none")),
    Refusal("echo", "is not supported for chat completions", _is(False)),
    Refusal("reasoning_effort", "is not supported (no reasoning parser)"),
    Refusal("audio", "is not supported (text-only models)"),
    Refusal("modalities", "is not supported other than ['text']",
            lambda value: value is None or value == ["text"]),
    Refusal("prediction", "is not supported"),
    Refusal("web_search_options", "is not supported"),
    Refusal("verbosity", "is not supported"),
]


def check_refusals(body: dict[str, Any], refusals: list[Refusal]) -> None:
    """A 400 naming the first field in ``body`` that this route refuses."""
    for refusal in refusals:
        if refusal.field in body and not refusal.harmless(body[refusal.field]):
            raise InvalidRequestError(f"'{refusal.field}' {refusal.message}"
                                      if not refusal.message.startswith('"')
                                      else f"{refusal.message} (field '{refusal.field}')",
                                      param=refusal.field)
