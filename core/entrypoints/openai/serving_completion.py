"""``POST /v1/completions``: text or token-id prompts, whole or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loraserve.entrypoints.openai.logprobs import completion_logprobs, vllm_prompt_logprobs
from loraserve.entrypoints.openai.prompts import (
    check_request_size,
    on_tokenizer_thread,
    sampling_params,
    tokenize_prompts,
)
from loraserve.entrypoints.openai.protocol import CompletionRequest, RequestDefaults
from loraserve.entrypoints.openai.responses import ServingResponse, json_response
from loraserve.entrypoints.openai.streaming import (
    Usage,
    merged,
    now,
    raise_if_failed,
    random_id,
    sse_response,
    streamable,
)

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine
    from loraserve.entrypoints.openai.server_config import RequestLimits
    from loraserve.entrypoints.openai.serving_models import ServingModels
    from loraserve.outputs import CompletionOutput, RequestOutput

Outputs = AsyncIterator[tuple[int, "RequestOutput"]]


class ServingCompletion:
    """Tokenizes prompts, runs them as one engine request each, and shapes the answer."""

    def __init__(self, engine: AsyncLLMEngine, models: ServingModels, limits: RequestLimits,
                 defaults: RequestDefaults) -> None:
        self.engine = engine
        self.models = models
        self.limits = limits
        self.defaults = defaults

    async def create(self, body: Any) -> ServingResponse:
        req = CompletionRequest.parse(body, self.defaults)
        check_request_size(self.limits, len(req.prompts), req.sampling.n)
        lora = await self.models.resolve(req.model)
        model_name = req.model or self.models.base_model_name
        context = self.engine.context
        prompts = await on_tokenizer_thread(
            tokenize_prompts, self.engine.tokenizer, context, req.prompts, req.add_special_tokens
        )
        # one params per prompt: max_tokens is clamped to the room each prompt leaves
        params = [sampling_params(req.sampling, len(p), context) for p in prompts]
        head = {"id": random_id("cmpl"), "object": "text_completion", "created": now(),
                "model": model_name}
        usage = Usage([len(p) for p in prompts], count_completions=not req.echo_only)
        texts = [p if isinstance(p, str) else None for p in req.prompts]
        outputs = merged(self.engine, prompts, params, head["id"], lora, texts)
        # with echo, each choice's text starts with its prompt's (token prompts decoded)
        decode = self.engine.tokenizer.decode
        echoes = _Echoes(texts, prompts, decode) if req.echo else None
        shape = _Shape(head, req.sampling.n, echoes, decode, req.echo_only, req.return_token_ids)
        if req.stream:  # the stream owns the outputs from here on
            return await sse_response(_chunks(outputs, shape, req.include_usage, usage))
        try:
            return await _whole(outputs, shape, usage)
        finally:
            await outputs.aclose()


class _Echoes:
    """Each prompt's text for echo, a token prompt decoded on first use: by then the engine
    has checked its ids against the vocabulary (the tokenizer raises on ids beyond it), and a
    request refused before generating decodes nothing."""

    def __init__(self, texts: list[str | None], prompts: list[list[int]],
                 decode: Callable[[list[int]], str]) -> None:
        self.texts, self.prompts, self.decode = list(texts), prompts, decode

    def __getitem__(self, index: int) -> str:
        if self.texts[index] is None:
            self.texts[index] = self.decode(self.prompts[index])
        return self.texts[index]


@dataclass
class _Shape:
    """How this request's choices are written: their ids, ``n``, and the echoed prompts."""

    head: dict[str, Any]
    n: int
    echoes: _Echoes | None  # each prompt's text, when echo is on
    decode: Callable[[list[int]], str]
    echo_only: bool = False  # the generated token is left out (echo with max_tokens 0)
    return_token_ids: bool = False  # vLLM's prompt_token_ids and token_ids on each choice

    def choice(
        self, index: int, out: RequestOutput, comp: CompletionOutput, text: str,
        first_token: int = 0, text_offset: int = 0,
    ) -> dict[str, Any]:
        """A choice carrying ``text`` and the logprobs of the tokens from ``first_token`` on.
        The first piece of a choice (``first_token`` 0) also carries the echoed prompt, its
        logprobs and vLLM's ``prompt_logprobs``."""
        first = first_token == 0
        echoing = self.echoes is not None and first
        echo = self.echoes[index] if echoing else ""
        if self.echo_only:
            text, first_token = "", len(comp.token_ids)
        logprobs = None
        if comp.logprobs is not None:
            ids, steps = comp.token_ids[first_token:], comp.logprobs[first_token:]
            if echoing and out.prompt_logprobs is not None:
                ids, steps = out.prompt_token_ids + ids, [*out.prompt_logprobs, *steps]
            logprobs = completion_logprobs(ids, steps, text_offset, self.decode)
        choice = {"index": index * self.n + comp.index, "text": echo + text, "logprobs": logprobs,
                  "finish_reason": comp.finish_reason, "stop_reason": comp.stop_reason}
        if first and out.prompt_logprobs is not None:
            choice["prompt_logprobs"] = vllm_prompt_logprobs(out.prompt_logprobs)
        if self.return_token_ids:  # vLLM: the prompt's ids on a choice's first piece only
            choice["prompt_token_ids"] = list(out.prompt_token_ids) if first else None
            choice["token_ids"] = [] if self.echo_only else list(comp.token_ids[first_token:])
        return choice

    def echo_len(self, index: int) -> int:
        return len(self.echoes[index]) if self.echoes is not None else 0


async def _whole(outputs: Outputs, shape: _Shape, usage: Usage) -> ServingResponse:
    final: dict[int, RequestOutput] = {}
    async for index, out in outputs:
        usage.observe(index, out)
        final[index] = out
        for comp in out.outputs:  # a failed choice ends the request now, aborting the rest
            raise_if_failed(comp, index * shape.n + comp.index)
    choices = [
        shape.choice(index, final[index], comp, comp.text)
        for index in sorted(final)
        for comp in final[index].outputs
    ]
    return json_response({**shape.head, "choices": choices, "usage": usage.usage()})


async def _chunks(
    outputs: Outputs, shape: _Shape, include_usage: bool, usage: Usage
) -> AsyncIterator[dict[str, Any]]:
    """One chunk per new piece of text of one choice; the last carries its finish_reason.

    A chunk's logprobs cover the tokens generated since the choice's previous chunk. A choice
    that failed in the engine sends its last chunk (finish_reason "error") and ends the
    stream with an error event. Ending or closing the chunks closes ``outputs``.
    """
    try:
        async for chunk in _choice_chunks(outputs, shape, include_usage, usage):
            yield chunk
    finally:
        await outputs.aclose()


async def _choice_chunks(
    outputs: Outputs, shape: _Shape, include_usage: bool, usage: Usage
) -> AsyncIterator[dict[str, Any]]:
    sent: dict[tuple[int, int], int] = {}  # characters of the choice's text already sent
    sent_tokens: dict[tuple[int, int], int] = {}
    finished: set[tuple[int, int]] = set()
    async for index, out in outputs:
        usage.observe(index, out)
        for comp in out.outputs:
            key = (index, comp.index)
            text = streamable(comp.text, comp.finish_reason is not None)
            delta = text[sent.get(key, 0):]
            if key in finished or (not delta and comp.finish_reason is None):
                continue
            offset = shape.echo_len(index) + sent[key] if key in sent else 0
            choice = shape.choice(index, out, comp, delta, sent_tokens.get(key, 0), offset)
            sent[key], sent_tokens[key] = len(text), len(comp.token_ids)
            if comp.finish_reason is not None:
                finished.add(key)
            yield {**shape.head, "choices": [choice]}
            raise_if_failed(comp, choice["index"])
    if include_usage:
        yield {**shape.head, "choices": [], "usage": usage.usage()}
