"""Request bodies of the OpenAI routes, parsed and type-checked from decoded JSON.

Unknown fields are ignored (as OpenAI and vLLM do); a present field of the wrong type is a
400 that names the field, and so is a value ``request_values`` refuses (not finite, outside
int64, not valid Unicode). Range checks of sampling values stay in ``SamplingParams``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loraserve.entrypoints.openai.request_values import (
    check_int64,
    check_text,
    check_token_ids,
    is_finite,
    show,
)
from loraserve.errors import InvalidRequestError
from loraserve.logprobs import MAX_LOGPROBS

_MISSING = object()
MAX_N = 128  # OpenAI's bound on choices per prompt; beyond it a request is a denial of service


def _field(body: dict[str, Any], name: str, kind: str, default: Any = None) -> Any:
    """Return ``body[name]`` checked against ``kind``; absent or null gives ``default``."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "dict": isinstance(value, dict),
        "list": isinstance(value, list),
    }[kind]
    if not ok:
        kind_name = {"str": "a string", "dict": "an object", "list": "an array",
                     "int": "an integer", "bool": "a boolean", "number": "a number"}[kind]
        raise InvalidRequestError(f"'{name}' must be {kind_name}, got {show(value)}")
    if kind == "number" and not is_finite(value):
        raise InvalidRequestError(f"'{name}' must be a finite number, got {show(value)}")
    if kind == "int":
        check_int64(name, value)
    if kind == "str":
        check_text(name, value)
    return value


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object")
    return body


def _stop_list(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [check_text("stop", stop)]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [check_text("stop", s) for s in stop]
    raise InvalidRequestError(f"'stop' must be a string or an array of strings, got {show(stop)}")


@dataclass(frozen=True)
class RequestDefaults:
    """The server's rules for sampling fields: how many logprobs a request may ask for
    (``--max-logprobs``) and what it gets for fields it leaves out (the generation config's
    temperature, top_p, top_k, repetition_penalty; its max_tokens caps every request)."""

    max_logprobs: int = MAX_LOGPROBS
    sampling: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class SamplingFields:
    """The sampling knobs shared by completions and chat (OpenAI's plus vLLM's extras)."""

    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    n: int
    stop: list[str] | None
    ignore_eos: bool
    stop_token_ids: list[int]
    include_stop_str_in_output: bool
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    min_tokens: int
    logit_bias: dict[int, float] | None
    logprobs: int | None  # how many top alternatives per token; None: no logprobs
    prompt_logprobs: int | None  # the same for the prompt's tokens (vLLM's extra field)
    max_tokens_cap: int | None = None  # the generation config's max_new_tokens

    @classmethod
    def parse(
        cls, body: dict[str, Any], max_tokens_default: int | None, logprobs: int | None,
        defaults: RequestDefaults = RequestDefaults(),
    ) -> SamplingFields:
        """``defaults.sampling`` fills what the body leaves out."""
        name = "max_tokens"
        max_tokens = _field(body, name, "int")
        if max_tokens is None:  # chat's newer name for the same limit
            name = "max_completion_tokens"
            max_tokens = _field(body, name, "int", max_tokens_default)
        if max_tokens is not None and max_tokens < 1:
            raise InvalidRequestError(f"'{name}' must be at least 1, got {max_tokens}")
        n = _field(body, "n", "int", 1)
        if not 1 <= n <= MAX_N:
            raise InvalidRequestError(f"'n' must be between 1 and {MAX_N}, got {n}")
        stop_token_ids = _field(body, "stop_token_ids", "list", [])
        if not _is_token_ids(stop_token_ids):
            raise InvalidRequestError(
                f"'stop_token_ids' must be an array of integers, got {show(stop_token_ids)}"
            )
        check_token_ids("stop_token_ids", stop_token_ids)
        given = defaults.sampling
        top_k = _field(body, "top_k", "int", given.get("top_k", 0))
        return cls(
            max_tokens=max_tokens,
            temperature=float(_field(body, "temperature", "number", given.get("temperature", 1.0))),
            top_p=float(_field(body, "top_p", "number", given.get("top_p", 1.0))),
            top_k=0 if top_k == -1 else top_k,  # vLLM spells "disabled" as -1
            seed=_field(body, "seed", "int"),
            n=n,
            stop=_stop_list(body),
            ignore_eos=_field(body, "ignore_eos", "bool", False),
            stop_token_ids=list(stop_token_ids),
            include_stop_str_in_output=_field(body, "include_stop_str_in_output", "bool", False),
            presence_penalty=float(_field(body, "presence_penalty", "number", 0.0)),
            frequency_penalty=float(_field(body, "frequency_penalty", "number", 0.0)),
            repetition_penalty=float(_field(body, "repetition_penalty", "number",
                                            given.get("repetition_penalty", 1.0))),
            min_tokens=_field(body, "min_tokens", "int", 0),
            logit_bias=_logit_bias(body),
            logprobs=logprobs,
            prompt_logprobs=_prompt_logprobs(body, defaults.max_logprobs),
            max_tokens_cap=given.get("max_tokens"),
        )


def _logit_bias(body: dict[str, Any]) -> dict[int, float] | None:
    """OpenAI's ``{"token id": bias}``; biases are clamped to [-100, 100] as vLLM does."""
    bias = _field(body, "logit_bias", "dict")
    if not bias:
        return None
    parsed = {}
    for key, value in bias.items():
        if not _TOKEN_ID_KEY.fullmatch(key):
            raise InvalidRequestError(f"'logit_bias' keys must be token ids, got {show(key)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_finite(value):
            raise InvalidRequestError(f"'logit_bias' values must be finite numbers, got {show(value)}")
        token = int(key)
        check_int64("logit_bias", token)
        parsed[token] = min(100.0, max(-100.0, float(value)))
    return parsed


_TOKEN_ID_KEY = re.compile(r"-?[0-9]{1,20}")  # ASCII digits only: int() also reads "²" and "١"


def _bounded_logprobs(name: str, value: int | None, max_logprobs: int) -> int | None:
    if value is not None and not 0 <= value <= max_logprobs:
        raise InvalidRequestError(f"'{name}' must be between 0 and {max_logprobs}, got {value} "
                                  f"(the server's --max-logprobs is {max_logprobs})")
    return value


def _prompt_logprobs(body: dict[str, Any], max_logprobs: int) -> int | None:
    value = _bounded_logprobs("prompt_logprobs", _field(body, "prompt_logprobs", "int"),
                              max_logprobs)
    if value is not None and _field(body, "stream", "bool", False):  # vLLM's check and message
        raise InvalidRequestError("`prompt_logprobs` are not available when `stream=True`.")
    return value


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Fields that would change the answer and that loraserve does not implement: a 400, not
    a silent answer to another question."""
    best_of = _field(body, "best_of", "int")
    if best_of is not None and best_of > 1:
        raise InvalidRequestError("'best_of' is not supported; use 'n' for several completions")
    if _field(body, "suffix", "str"):
        raise InvalidRequestError("'suffix' is not supported")


def _include_usage(body: dict[str, Any]) -> bool:
    options = _field(body, "stream_options", "dict")
    if options is None:
        return False
    if not _field(body, "stream", "bool", False):  # vLLM's check and message
        raise InvalidRequestError("Stream options can only be defined when `stream=True`.")
    return bool(_field(options, "include_usage", "bool", False))


@dataclass
class CompletionRequest:
    """``POST /v1/completions``: one or more prompts as text or token ids."""

    model: str | None
    prompts: list[str | list[int]]
    sampling: SamplingFields
    stream: bool = False
    include_usage: bool = False
    echo: bool = False  # the prompt's text starts each choice's text
    echo_only: bool = False  # echo with max_tokens 0: the prompt (and its logprobs) alone

    @classmethod
    def parse(cls, body: Any, defaults: RequestDefaults = RequestDefaults()) -> CompletionRequest:
        body = _require_object(body)
        if "prompt" not in body or body["prompt"] is None:
            raise InvalidRequestError("'prompt' is required")
        _refuse_unsupported(body)
        logprobs = _bounded_logprobs("logprobs", _field(body, "logprobs", "int"),
                                     defaults.max_logprobs)
        echo = _field(body, "echo", "bool", False)
        # vLLM's echo without generation: one token is generated and then left out
        echo_only = echo and _field(body, "max_tokens", "int") == 0
        if echo_only:
            body = {**body, "max_tokens": 1}
        sampling = SamplingFields.parse(body, max_tokens_default=16, logprobs=logprobs,  # OpenAI's
                                        defaults=defaults)
        if echo and logprobs is not None:  # the echoed prompt's tokens get logprobs too
            sampling.prompt_logprobs = max(sampling.prompt_logprobs or 0, logprobs)
        return cls(
            model=_field(body, "model", "str"),
            prompts=_parse_prompts(body["prompt"]),
            sampling=sampling,
            stream=_field(body, "stream", "bool", False),
            include_usage=_include_usage(body),
            echo=echo,
            echo_only=echo_only,
        )


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _parse_prompts(prompt: Any) -> list[str | list[int]]:
    """OpenAI's four prompt shapes: str, [str], [int], [[int]]."""
    if isinstance(prompt, str):
        return [check_text("prompt", prompt)]
    if isinstance(prompt, list) and prompt:
        if _is_token_ids(prompt):
            check_token_ids("prompt", prompt)
            return [list(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return [check_text("prompt", p) for p in prompt]
        if all(_is_token_ids(p) and p for p in prompt):
            for p in prompt:
                check_token_ids("prompt", p)
            return [list(p) for p in prompt]
    raise InvalidRequestError(
        "'prompt' must be a non-empty string, array of strings, array of token ids, "
        f"or array of token-id arrays, got {show(prompt)}"
    )


@dataclass
class ChatCompletionRequest:
    """``POST /v1/chat/completions``: messages rendered with the tokenizer's chat template."""

    model: str | None
    messages: list[dict[str, str]]
    sampling: SamplingFields
    stream: bool = False
    include_usage: bool = False
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, body: Any, defaults: RequestDefaults = RequestDefaults()) -> ChatCompletionRequest:
        body = _require_object(body)
        messages = parse_messages(body)
        _refuse_unsupported(body)
        return cls(
            model=_field(body, "model", "str"),
            messages=messages,
            # None: up to the context limit, as vLLM does for chat
            sampling=SamplingFields.parse(body, max_tokens_default=None,
                                          logprobs=_chat_logprobs(body, defaults.max_logprobs),
                                          defaults=defaults),
            stream=_field(body, "stream", "bool", False),
            include_usage=_include_usage(body),
            add_generation_prompt=_field(body, "add_generation_prompt", "bool", True),
            chat_template_kwargs=_field(body, "chat_template_kwargs", "dict", {}),
        )


def _chat_logprobs(body: dict[str, Any], max_logprobs: int) -> int | None:
    """Chat spells it ``logprobs: true`` plus ``top_logprobs: N`` (vLLM's checks and message)."""
    top = _bounded_logprobs("top_logprobs", _field(body, "top_logprobs", "int"), max_logprobs)
    if not _field(body, "logprobs", "bool", False):
        if top:
            raise InvalidRequestError("when using `top_logprobs`, `logprobs` must be set to true.")
        return None
    return top or 0


def parse_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """A chat body's ``messages``: a non-empty array of messages."""
    messages = _field(body, "messages", "list")
    if not messages:
        raise InvalidRequestError("'messages' is required and must be a non-empty array")
    return [_parse_message(i, m) for i, m in enumerate(messages)]


def _parse_message(index: int, message: Any) -> dict[str, str]:
    """A message's content may be a string or an array of text parts."""
    if not isinstance(message, dict):
        raise InvalidRequestError(f"'messages[{index}]' must be an object, got {show(message)}")
    role = message.get("role")
    if not isinstance(role, str) or not role:
        raise InvalidRequestError(f"'messages[{index}].role' must be a non-empty string")
    check_text(f"messages[{index}].role", role)
    content = message.get("content")
    if content is None:
        content = ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise InvalidRequestError(
                    f"'messages[{index}].content': only text parts are supported, got {show(part)}"
                )
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise InvalidRequestError(
            f"'messages[{index}].content' must be a string or an array of text parts"
        )
    return {"role": role, "content": check_text(f"messages[{index}].content", content)}


@dataclass
class LoadLoRAAdapterRequest:
    """``POST /v1/load_lora_adapter`` (vLLM's body)."""

    lora_name: str | None
    lora_path: str | None

    @classmethod
    def parse(cls, body: Any) -> LoadLoRAAdapterRequest:
        body = _require_object(body)
        return cls(_field(body, "lora_name", "str"), _field(body, "lora_path", "str"))


@dataclass
class UnloadLoRAAdapterRequest:
    """``POST /v1/unload_lora_adapter`` (vLLM's body: a name or an int id)."""

    lora_name: str | None
    lora_int_id: int | None

    @classmethod
    def parse(cls, body: Any) -> UnloadLoRAAdapterRequest:
        body = _require_object(body)
        return cls(_field(body, "lora_name", "str"), _field(body, "lora_int_id", "int"))

