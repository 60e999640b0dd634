"""Request bodies of every route, as pydantic models: one schema that validates requests and
generates ``/openapi.json`` (``openapi.py``).

Unknown fields are ignored (as OpenAI and vLLM do); every field either side documents is
declared here or refused by ``refusals`` with a 400 naming it. A field of the wrong type, or
a value ``request_types`` refuses (not finite, outside int64, not valid Unicode), is a 400
whose message and ``param`` name the field. Range checks of sampling values stay in
``SamplingParams``; ``protocol`` turns a body into the request the serving code reads.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, WithJsonSchema

from loraserve.entrypoints.openai.request_types import (
    Boolean,
    Integer,
    Number,
    Object,
    RequestModel,
    Text,
    Texts,
    TokenIds,
    is_token_ids,
    refuse,
    token_ids,
)
from loraserve.entrypoints.openai.request_values import INT64, is_finite, is_text, show

MAX_N = 128  # OpenAI's bound on choices per prompt; beyond it a request is a denial of service
_TOKEN_ID_KEY = re.compile(r"-?[0-9]{1,20}")  # ASCII digits only: int() also reads "²" and "١"


def _logit_bias(value: Any) -> Any:
    """OpenAI's ``{"token id": bias}`` as ``{id: bias}``, biases clamped to [-100, 100]."""
    if not isinstance(value, dict):
        raise refuse(f"must be an object, got {show(value)}")
    parsed = {}
    for key, bias in value.items():
        if not _TOKEN_ID_KEY.fullmatch(key):
            raise refuse(f"keys must be token ids, got {show(key)}")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not is_finite(bias):
            raise refuse(f"values must be finite numbers, got {show(bias)}")
        token = int(key)
        if not INT64[0] <= token <= INT64[1]:
            raise refuse(f"must be an integer in [{INT64[0]}, {INT64[1]}], got {show(token)}")
        parsed[token] = min(100.0, max(-100.0, float(bias)))
    return parsed


def _prompts(prompt: Any) -> Any:
    """OpenAI's four prompt shapes, read as a list of prompts: str, [str], [int], [[int]]."""
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and is_token_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and (
            all(isinstance(p, str) for p in prompt)
            or all(is_token_ids(p) and p for p in prompt)):
        prompts = prompt
    else:
        raise refuse("must be a non-empty string, array of strings, array of token ids, "
                     f"or array of token-id arrays, got {show(prompt)}")
    for p in prompts:
        if isinstance(p, str) and not is_text(p):
            raise refuse("must be valid Unicode text (it has a lone surrogate)")
        if isinstance(p, list) and any(not INT64[0] <= t <= INT64[1] for t in p):
            raise refuse("has token ids outside the int64 range")
    return [list(p) if isinstance(p, list) else p for p in prompts]


def _json_schema(value: Any) -> Any:
    if not isinstance(value, (dict, str)):
        raise refuse(f"must be a JSON schema (an object or its JSON text), got {show(value)}")
    if isinstance(value, str) and not is_text(value):
        raise refuse("must be valid Unicode text (it has a lone surrogate)")
    return value


_TOKEN_LIST = {"type": "array", "items": {"type": "integer"}}
LogitBias = Annotated[Any, BeforeValidator(_logit_bias), WithJsonSchema(
    {"type": "object", "additionalProperties": {"type": "number"},
     "description": "token id (as a string) to a bias in [-100, 100]"})]
Prompts = Annotated[Any, BeforeValidator(_prompts), WithJsonSchema(
    {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
               _TOKEN_LIST, {"type": "array", "items": _TOKEN_LIST}]})]
JsonSchema = Annotated[Any, BeforeValidator(_json_schema), WithJsonSchema(
    {"anyOf": [{"type": "object"}, {"type": "string"}]})]
Refused = Annotated[Any, Field(description="Refused with a 400 unless null or its no-op "
                                           "value (see docs/server.md)")]


class StreamOptions(RequestModel):
    include_usage: Boolean | None = None
    continuous_usage_stats: Boolean | None = None


class SamplingBody(RequestModel):
    """The fields completions and chat share: OpenAI's sampling knobs plus vLLM's extras."""

    model: Text | None = Field(None, description="The base model or an adapter; '' or absent: "
                                                 "the base model")
    max_tokens: Integer | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    top_k: Integer | None = Field(None, description="-1 or 0: disabled")
    min_p: Number | None = None
    seed: Integer | None = None
    n: Integer | None = None
    stop: Texts | None = None
    stop_token_ids: TokenIds | None = None
    include_stop_str_in_output: Boolean | None = None
    ignore_eos: Boolean | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    repetition_penalty: Number | None = None
    min_tokens: Integer | None = None
    logit_bias: LogitBias | None = None
    prompt_logprobs: Integer | None = None
    stream: Boolean | None = None
    stream_options: StreamOptions | None = None
    skip_special_tokens: Boolean | None = None
    bad_words: Texts | None = None
    truncate_prompt_tokens: Integer | None = None
    return_token_ids: Boolean | None = Field(
        None, description="Each choice carries 'token_ids', the response 'prompt_token_ids'")
    user: Text | None = Field(None, description="Accepted; does not change the answer")
    # refused unless null or their no-op value: see refusals.py
    use_beam_search: Refused = None
    length_penalty: Refused = None
    allowed_token_ids: Refused = None
    logits_processors: Refused = None
    return_tokens_as_token_ids: Refused = None
    spaces_between_special_tokens: Refused = None
    response_format: Object | None = Field(None, description="OpenAI's: {'type': 'text' | "
                                           "'json_object' | 'json_schema', 'json_schema': ...}")
    structured_outputs: Object | None = Field(None, description="vLLM's: one of json, regex, "
                                              "choice, grammar, json_object")
    guided_json: JsonSchema | None = None
    guided_regex: Text | None = None
    guided_choice: Texts | None = None
    guided_grammar: Text | None = None
    structural_tag: Refused = None
    guided_decoding_backend: Refused = None
    guided_whitespace_pattern: Refused = None
    priority: Refused = None
    request_id: Refused = None
    cache_salt: Refused = None
    kv_transfer_params: Refused = None
    vllm_xargs: Refused = None
    mm_processor_kwargs: Refused = None
    media_io_kwargs: Refused = None
    thinking_token_budget: Refused = None


class CompletionBody(SamplingBody):
    """``POST /v1/completions``."""

    prompt: Prompts
    logprobs: Integer | None = None
    echo: Boolean | None = None
    add_special_tokens: Boolean | None = Field(None, description="Add the tokenizer's special "
                                                                 "tokens (BOS) to text prompts; "
                                                                 "default true")
    best_of: Refused = None
    suffix: Refused = None
    prompt_embeds: Refused = None


def _content(value: Any) -> Any:
    """A message's content: a string, or text parts joined with "\\n" as vLLM does."""
    if value is None:
        return None
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise refuse(f"only text parts are supported, got {show(part)}")
            texts.append(part["text"])
    else:
        raise refuse(f"must be a string or an array of text parts, got {show(value)}")
    if not all(is_text(t) for t in texts):
        raise refuse("must be valid Unicode text (it has a lone surrogate)")
    return "\n".join(texts)


def _objects(value: Any) -> Any:
    if not isinstance(value, list) or not all(isinstance(d, dict) for d in value):
        raise refuse(f"must be an array of objects, got {show(value)}")
    return value


Objects = Annotated[list[dict[str, Any]], BeforeValidator(_objects)]
DetokenizeIds = token_ids("an array of token ids")


def _role(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        raise refuse(f"must be a non-empty string, got {show(value)}")
    if not is_text(value):
        raise refuse("must be valid Unicode text (it has a lone surrogate)")
    return value


def _content_or_calls(value: Any, info: ValidationInfo) -> Any:
    if value is None and not (info.data.get("role") == "assistant" and info.data.get("tool_calls")):
        raise refuse("must be a string or an array of text parts (null only in an assistant "
                     "message with tool_calls)")
    return value


class ChatMessage(RequestModel):
    role: Annotated[str, BeforeValidator(_role)]
    name: Text | None = None
    tool_calls: Objects | None = None
    tool_call_id: Text | None = None
    content: Annotated[str | None, BeforeValidator(_content), AfterValidator(_content_or_calls),
                       WithJsonSchema(
        {"anyOf": [{"type": "string"},
                   {"type": "array", "items": {
                       "type": "object", "required": ["type", "text"],
                       "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}},
                   {"type": "null"}]})] = Field(None, validate_default=True)

    def as_template_input(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        return message


def _messages(value: Any) -> Any:
    if not isinstance(value, list):
        raise refuse(f"must be an array, got {show(value)}")
    if not value:
        raise refuse("is required and must be a non-empty array")
    return value


Messages = Annotated[list[ChatMessage], BeforeValidator(_messages)]


class ChatTemplateFields(RequestModel):
    """How messages become a prompt: chat completions and ``/tokenize`` share these."""

    messages: Messages
    add_generation_prompt: Boolean | None = None
    continue_final_message: Boolean | None = None
    add_special_tokens: Boolean | None = None
    chat_template: Text | None = Field(
        None, description="A Jinja template; refused unless --trust-request-chat-template")
    chat_template_kwargs: Object | None = None
    documents: Objects | None = None
    tools: Objects | None = Field(None, description="OpenAI's function tools, shown to the "
                                                    "chat template")


class ChatCompletionBody(SamplingBody, ChatTemplateFields):
    """``POST /v1/chat/completions``."""

    max_completion_tokens: Integer | None = None
    logprobs: Boolean | None = None
    top_logprobs: Integer | None = None
    tool_choice: Any = Field(None, description="'none', 'auto' (needs --enable-auto-tool-choice"
                                               "), 'required' or {'type': 'function', "
                                               "'function': {'name': ...}}")
    parallel_tool_calls: Boolean | None = Field(None, description="false: at most one call "
                                                                  "under tool_choice required")
    functions: Refused = None
    function_call: Refused = None
    echo: Refused = None
    reasoning_effort: Refused = None
    include_reasoning: Boolean | None = Field(None, description="Accepted; no effect without "
                                                                "a reasoning parser")
    audio: Refused = None
    modalities: Refused = None
    prediction: Refused = None
    web_search_options: Refused = None
    verbosity: Refused = None
    metadata: Object | None = Field(None, description="Accepted; does not change the answer")
    store: Boolean | None = Field(None, description="Accepted; nothing is stored")
    service_tier: Text | None = Field(None, description="Accepted; does not change the answer")
    prompt_cache_key: Text | None = Field(None, description="Accepted; does not change the answer")
    safety_identifier: Text | None = Field(None, description="Accepted; does not change the answer")


class LoadLoRAAdapterRequest(RequestModel):
    """``POST /v1/load_lora_adapter`` (vLLM's body)."""

    lora_name: Text | None = None
    lora_path: Text | None = None
    load_inplace: Boolean = Field(
        False, description="Replace the weights under a loaded name (requests already running "
                           "finish on the old weights)")


class UnloadLoRAAdapterRequest(RequestModel):
    """``POST /v1/unload_lora_adapter`` (vLLM's body: a name or an int id)."""

    lora_name: Text | None = None
    lora_int_id: Integer | None = None


class SageMakerLoadAdapterRequest(RequestModel):
    """``POST /adapters``: ``{"name", "src"}``, vLLM's load body under SageMaker's names."""

    name: Text | None = None
    src: Text | None = None


class TokenizeCompletionBody(RequestModel):
    """``POST /tokenize`` with a prompt."""

    model: Text | None = None
    prompt: Text
    add_special_tokens: Boolean = True
    return_token_strs: Boolean = False


class TokenizeChatBody(ChatTemplateFields):
    """``POST /tokenize`` with chat messages, rendered as chat completions render them."""

    model: Text | None = None
    return_token_strs: Boolean = False


class DetokenizeBody(RequestModel):
    """``POST /detokenize``."""

    model: Text | None = None
    tokens: DetokenizeIds
