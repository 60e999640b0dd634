"""From a parsed request to what the engine takes: token ids (made on the one tokenizer
thread), sampling params, and the per-request size limits checked before any of it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from loraserve.entrypoints.openai.request_values import is_text
from loraserve.entrypoints.openai.tools import template_messages
from loraserve.errors import InvalidRequestError
from loraserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from loraserve.engine.admission import ContextLimit
    from loraserve.entrypoints.openai.protocol import ChatCompletionRequest, SamplingFields
    from loraserve.entrypoints.openai.server_config import RequestLimits

# One thread does all tokenizing and chat rendering: a multi-megabyte prompt never stalls the
# event loop, and a tokenizer (not every backend is thread-safe) is never used by two at once.
_TOKENIZER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraserve-tokenizer")

UNTRUSTED_TEMPLATE = (  # vLLM's words
    "Chat template is passed with request, but --trust-request-chat-template is not set. "
    "Refused request with untrusted chat template."
)
NO_TEMPLATE = (
    "The model '{model}' has no chat template (tokenizer_config.json has no 'chat_template'), "
    "so /v1/chat/completions cannot format messages; use /v1/completions, or add a chat "
    "template to the model's tokenizer."
)


def chosen_chat_template(requested: str | None, server: str | None, trusted: bool) -> str | None:
    """The request's template when the server trusts request templates (vLLM's
    ``--trust-request-chat-template``; a 400 otherwise), else ``--chat-template`` (None: the
    tokenizer's)."""
    if requested is None:
        return server
    if not trusted:
        raise InvalidRequestError(UNTRUSTED_TEMPLATE, param="chat_template")
    return requested


async def on_tokenizer_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(
        _TOKENIZER_THREAD, functools.partial(fn, *args)
    )


def check_request_size(limits: RequestLimits, prompts: int, n: int) -> None:
    """Refuse a request larger than the server's limits, before any tokenizing."""
    if prompts > limits.max_prompts_per_request:
        raise InvalidRequestError(
            f"This request has {prompts} prompts, more than the server's limit of "
            f"{limits.max_prompts_per_request} per request (--max-prompts-per-request)"
        )
    if prompts * n > limits.max_sequences_per_request:
        raise InvalidRequestError(
            f"This request asks for {prompts * n} sequences ({prompts} prompts x n={n}), more "
            f"than the server's limit of {limits.max_sequences_per_request} per request "
            "(--max-sequences-per-request)"
        )


def tokenize_prompts(
    tokenizer: Any, context: ContextLimit, prompts: list[str | list[int]],
    add_special_tokens: bool = True,
) -> list[list[int]]:
    """Completion prompts as token ids; a text too long for any tokenization is refused
    before it is tokenized."""
    for text in (p for p in prompts if isinstance(p, str)):  # max_tokens is clamped to the room
        context.check_chars(len(text), tokenizer.max_token_chars, None)
    return [p if isinstance(p, list) else list(tokenizer.encode(p, add_special_tokens=add_special_tokens))
            for p in prompts]


def render_chat(tokenizer: Any, context: ContextLimit, req: ChatCompletionRequest,
                model_name: str, chat_template: str | None = None) -> list[int]:
    """The conversation through ``chat_template`` (``chosen_chat_template``'s) as ids."""
    extra = dict(req.chat_template_kwargs)
    if req.tools:
        extra["tools"] = req.tools
    return chat_token_ids(
        tokenizer, context, template_messages(req.messages), model_name, chat_template,
        completion_tokens=None, add_special_tokens=req.add_special_tokens,
        add_generation_prompt=req.add_generation_prompt,
        continue_final_message=req.continue_final_message, **extra,
    )


def chat_token_ids(tokenizer: Any, context: ContextLimit, messages: list[dict], model_name: str,
                   chat_template: str | None, completion_tokens: int | None,
                   add_special_tokens: bool = False, **template_kwargs: Any) -> list[int]:
    """Messages rendered by a chat template, then tokenized; the template writes any special
    tokens itself, as in vLLM, unless ``add_special_tokens`` asks for the tokenizer's too."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError(NO_TEMPLATE.format(model=model_name))
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, chat_template=chat_template, **template_kwargs)
    except Exception as exc:  # a template that rejects these messages is the caller's 400
        raise InvalidRequestError(f"The chat template could not render the messages: {exc}") from exc
    context.check_chars(len(text), tokenizer.max_token_chars, completion_tokens)
    # the request's strings were checked when parsed; kwargs may still render a lone
    # surrogate, on which the tokenizer raises
    if not is_text(text):
        raise InvalidRequestError("The prompt must be valid Unicode text (it has a lone surrogate)")
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def sampling_params(fields: SamplingFields, prompt_len: int, context: ContextLimit) -> SamplingParams:
    """The engine's params for one prompt, as vLLM makes them: ``max_tokens`` is clamped to
    the room the prompt leaves (the answer then ends with finish_reason "length"), and no
    ``max_tokens`` means "up to the context limit". A prompt that leaves no room is a 400."""
    keep = fields.extra.get("truncate_prompt_tokens")  # the engine keeps the prompt's tail
    if keep is not None:
        prompt_len = min(prompt_len, context.max_model_len if keep == -1 else keep)
    room = context.room(prompt_len)
    if room < 1:  # the engine checks a request that fits once more, at admission
        context.check(prompt_len, None)
    max_tokens = room if fields.max_tokens is None else min(fields.max_tokens, room)
    if fields.max_tokens_cap is not None:  # the generation config's max_new_tokens, as vLLM
        max_tokens = min(max_tokens, fields.max_tokens_cap)
    return SamplingParams(
        temperature=fields.temperature,
        top_p=fields.top_p,
        top_k=fields.top_k,
        max_tokens=max_tokens,
        stop=fields.stop,
        seed=fields.seed,
        ignore_eos=fields.ignore_eos,
        n=fields.n,
        stop_token_ids=fields.stop_token_ids,
        include_stop_str_in_output=fields.include_stop_str_in_output,
        presence_penalty=fields.presence_penalty,
        frequency_penalty=fields.frequency_penalty,
        repetition_penalty=fields.repetition_penalty,
        min_tokens=fields.min_tokens,
        logit_bias=fields.logit_bias,
        logprobs=fields.logprobs,
        prompt_logprobs=fields.prompt_logprobs,
        structured_outputs=fields.structured,
        **fields.extra,
    )
