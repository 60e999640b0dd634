"""From a validated body (``schema``) to the request the serving code reads: defaults filled
in, vLLM's cross-field rules checked, each refusal a 400 that names its field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from loraserve.entrypoints.openai import refusals
from loraserve.entrypoints.openai.schema import (
    MAX_N,
    ChatCompletionBody,
    CompletionBody,
    LoadLoRAAdapterRequest,
    SamplingBody,
    UnloadLoRAAdapterRequest,
)
from loraserve.entrypoints.openai.structured import structured_outputs
from loraserve.errors import InvalidRequestError
from loraserve.logprobs import MAX_LOGPROBS
from loraserve.sampling_params import SamplingParams, StructuredOutputsParams

__all__ = ["ChatCompletionRequest", "CompletionRequest", "LoadLoRAAdapterRequest",
           "RequestDefaults", "SamplingFields", "UnloadLoRAAdapterRequest"]

_GREEDY_EPS = 1e-5  # vLLM's: a temperature below this is greedy sampling
# vLLM's request fields that SamplingParams may take by the same name (the offline API adds
# them); a request that sets one SamplingParams does not have is refused
_PASS_THROUGH = {"min_p": 0.0, "skip_special_tokens": True, "bad_words": [],
                 "truncate_prompt_tokens": None}


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
    structured: StructuredOutputsParams | None = None  # the text's constraint (JSON, regex...)
    extra: dict[str, Any] = field(default_factory=dict)  # vLLM's fields passed through by name

    @classmethod
    def parse(cls, body: SamplingBody, max_tokens: int | None, logprobs: int | None,
              defaults: RequestDefaults) -> SamplingFields:
        """``defaults.sampling`` fills what the body leaves out."""
        given = defaults.sampling
        n = _or(body.n, 1)
        if not 1 <= n <= MAX_N:
            raise InvalidRequestError(f"'n' must be between 1 and {MAX_N}, got {n}", param="n")
        temperature = _or(body.temperature, given.get("temperature", 1.0))
        if n > 1 and temperature < _GREEDY_EPS:  # vLLM's rule and message
            raise InvalidRequestError(f"n must be 1 when using greedy sampling, got {n}.",
                                      param="n")
        top_k = _or(body.top_k, given.get("top_k", 0))
        return cls(
            max_tokens=max_tokens,
            temperature=float(temperature),
            top_p=float(_or(body.top_p, given.get("top_p", 1.0))),
            top_k=0 if top_k == -1 else top_k,  # vLLM spells "disabled" as -1
            seed=body.seed,
            n=n,
            stop=body.stop,
            ignore_eos=_or(body.ignore_eos, False),
            stop_token_ids=list(body.stop_token_ids or []),
            include_stop_str_in_output=_or(body.include_stop_str_in_output, False),
            presence_penalty=_or(body.presence_penalty, 0.0),
            frequency_penalty=_or(body.frequency_penalty, 0.0),
            repetition_penalty=_or(body.repetition_penalty, given.get("repetition_penalty", 1.0)),
            min_tokens=_or(body.min_tokens, 0),
            logit_bias=body.logit_bias or None,
            logprobs=logprobs,
            prompt_logprobs=_prompt_logprobs(body, defaults.max_logprobs),
            max_tokens_cap=given.get("max_tokens"),
            structured=structured_outputs(body),
            extra=_pass_through(body),
        )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _pass_through(body: SamplingBody) -> dict[str, Any]:
    """vLLM's fields that SamplingParams takes by name; refused while it does not have them."""
    known = {f.name for f in fields(SamplingParams)}
    extra = {}
    for name, no_op in _PASS_THROUGH.items():
        value = getattr(body, name)
        if value is None or value == no_op:
            continue
        if name not in known:
            raise InvalidRequestError(f"'{name}' is not supported yet", param=name)
        extra[name] = value
    return extra


def _bounded_logprobs(name: str, value: int | None, max_logprobs: int) -> int | None:
    if value is not None and not 0 <= value <= max_logprobs:
        raise InvalidRequestError(f"'{name}' must be between 0 and {max_logprobs}, got {value} "
                                  f"(the server's --max-logprobs is {max_logprobs})", param=name)
    return value


def _prompt_logprobs(body: SamplingBody, max_logprobs: int) -> int | None:
    value = _bounded_logprobs("prompt_logprobs", body.prompt_logprobs, max_logprobs)
    if value is not None and body.stream:  # vLLM's check and message
        raise InvalidRequestError("`prompt_logprobs` are not available when `stream=True`.",
                                  param="prompt_logprobs")
    return value


def _include_usage(body: SamplingBody) -> bool:
    options = body.stream_options
    if options is None:
        return False
    if not body.stream:  # vLLM's check and message
        raise InvalidRequestError("Stream options can only be defined when `stream=True`.",
                                  param="stream_options")
    if options.continuous_usage_stats:
        raise InvalidRequestError("'stream_options.continuous_usage_stats' is not supported",
                                  param="stream_options.continuous_usage_stats")
    return bool(options.include_usage)


def _max_tokens(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise InvalidRequestError(f"'{name}' must be at least 1, got {value}", param=name)
    return value


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
    return_token_ids: bool = False
    add_special_tokens: bool = True  # text prompts get the tokenizer's BOS, as vLLM

    @classmethod
    def parse(cls, body: Any, defaults: RequestDefaults = RequestDefaults()) -> CompletionRequest:
        if isinstance(body, dict):
            if body.get("prompt") is None:
                raise InvalidRequestError("'prompt' is required", param="prompt")
            refusals.check_refusals(body, refusals.COMPLETION)
        req = CompletionBody.parse(body)
        logprobs = _bounded_logprobs("logprobs", req.logprobs, defaults.max_logprobs)
        echo = bool(req.echo)
        # vLLM's echo without generation: one token is generated and then left out
        echo_only = echo and req.max_tokens == 0
        max_tokens = 1 if echo_only else _max_tokens("max_tokens", _or(req.max_tokens, 16))
        sampling = SamplingFields.parse(req, max_tokens, logprobs, defaults)
        if echo and logprobs is not None:  # the echoed prompt's tokens get logprobs too
            sampling.prompt_logprobs = max(sampling.prompt_logprobs or 0, logprobs)
        return cls(model=req.model or None, prompts=req.prompt, sampling=sampling,
                   stream=bool(req.stream), include_usage=_include_usage(req), echo=echo,
                   echo_only=echo_only, return_token_ids=bool(req.return_token_ids),
                   add_special_tokens=_or(req.add_special_tokens, True))


@dataclass
class ChatCompletionRequest:
    """``POST /v1/chat/completions``: messages rendered with a chat template."""

    model: str | None
    messages: list[dict[str, Any]]
    sampling: SamplingFields
    stream: bool = False
    include_usage: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None  # the request's own (refused unless trusted)
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    return_token_ids: bool = False
    tools: list[dict[str, Any]] | None = None  # checked with tool_choice by ``tools.tool_choice``
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None

    @classmethod
    def parse(cls, body: Any, defaults: RequestDefaults = RequestDefaults()) -> ChatCompletionRequest:
        if isinstance(body, dict):
            refusals.check_refusals(body, refusals.CHAT)
        req = ChatCompletionBody.parse(body)
        name = "max_tokens" if req.max_tokens is not None else "max_completion_tokens"
        # None: up to the context limit, as vLLM does for chat
        max_tokens = _max_tokens(name, _or(req.max_tokens, req.max_completion_tokens))
        sampling = SamplingFields.parse(req, max_tokens, _chat_logprobs(req, defaults.max_logprobs),
                                        defaults)
        kwargs, template = chat_template_inputs(req)
        return cls(
            model=req.model or None, messages=[m.as_template_input() for m in req.messages],
            sampling=sampling, stream=bool(req.stream), include_usage=_include_usage(req),
            add_generation_prompt=kwargs["add_generation_prompt"],
            continue_final_message=kwargs["continue_final_message"],
            add_special_tokens=bool(req.add_special_tokens), chat_template=template,
            chat_template_kwargs=kwargs["extra"], return_token_ids=bool(req.return_token_ids),
            tools=req.tools, tool_choice=req.tool_choice,
            parallel_tool_calls=req.parallel_tool_calls,
        )


_RENDER_ARGUMENTS = {"conversation", "messages", "tokenize", "add_special_tokens", "return_dict",
                     "tokenizer_kwargs", "return_tensors", "padding", "truncation", "max_length"}


def chat_template_inputs(req: Any) -> tuple[dict[str, Any], str | None]:
    """vLLM's rules for the chat template's inputs (chat completions and ``/tokenize``):
    ``continue_final_message`` excludes ``add_generation_prompt`` and needs an open last
    message; ``chat_template`` may also come in ``chat_template_kwargs``."""
    extra = dict(req.chat_template_kwargs or {})
    if clash := sorted(_RENDER_ARGUMENTS & extra.keys()):  # the renderer's own arguments
        raise InvalidRequestError(f"'chat_template_kwargs' may not set {clash}",
                                  param="chat_template_kwargs")
    # as vLLM, chat_template_kwargs win over the request's own fields
    continue_final = extra.pop("continue_final_message", bool(req.continue_final_message))
    add_prompt = extra.pop("add_generation_prompt", _or(req.add_generation_prompt, True))
    if not isinstance(continue_final, bool) or not isinstance(add_prompt, bool):
        raise InvalidRequestError("'chat_template_kwargs': add_generation_prompt and "
                                  "continue_final_message must be booleans",
                                  param="chat_template_kwargs")
    if continue_final and add_prompt:
        raise InvalidRequestError(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            param="continue_final_message")
    template = req.chat_template or extra.pop("chat_template", None)
    if template is not None and not isinstance(template, str):
        raise InvalidRequestError("'chat_template_kwargs.chat_template' must be a string",
                                  param="chat_template_kwargs")
    if req.documents is not None:
        extra["documents"] = req.documents
    return {"add_generation_prompt": add_prompt, "continue_final_message": continue_final,
            "extra": extra}, template


def _chat_logprobs(req: ChatCompletionBody, max_logprobs: int) -> int | None:
    """Chat spells it ``logprobs: true`` plus ``top_logprobs: N`` (vLLM's checks and message)."""
    top = _bounded_logprobs("top_logprobs", req.top_logprobs, max_logprobs)
    if not req.logprobs:
        if top:
            raise InvalidRequestError("when using `top_logprobs`, `logprobs` must be set to true.",
                                      param="top_logprobs")
        return None
    return top or 0
