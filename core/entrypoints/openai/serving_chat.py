"""``POST /v1/chat/completions``: messages through the tokenizer's chat template."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from loraserve.entrypoints.openai.generation import (
    SSEStream,
    Usage,
    check_prompt_chars,
    check_request_size,
    merged,
    now,
    on_tokenizer_thread,
    raise_if_failed,
    random_id,
    sampling_params,
    streamable,
)
from loraserve.entrypoints.openai.logprobs import chat_logprobs, vllm_prompt_logprobs
from loraserve.entrypoints.openai.protocol import ChatCompletionRequest, SamplingFields
from loraserve.entrypoints.openai.request_values import is_text
from loraserve.errors import InvalidRequestError

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine
    from loraserve.entrypoints.openai.server_config import RequestLimits
    from loraserve.entrypoints.openai.serving_models import ServingModels
    from loraserve.outputs import RequestOutput

Outputs = AsyncIterator[tuple[int, "RequestOutput"]]

NO_TEMPLATE = (
    "The model '{model}' has no chat template (tokenizer_config.json has no 'chat_template'), "
    "so /v1/chat/completions cannot format messages; use /v1/completions, or add a chat "
    "template to the model's tokenizer."
)


class ServingChat:
    """Renders the conversation to token ids, then runs and shapes it like a completion."""

    def __init__(self, engine: AsyncLLMEngine, models: ServingModels, limits: RequestLimits) -> None:
        self.engine = engine
        self.models = models
        self.limits = limits

    def _render(self, req: ChatCompletionRequest) -> list[int]:
        tokenizer = self.engine.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidRequestError(NO_TEMPLATE.format(model=self.models.base_model_name))
        try:
            text = tokenizer.apply_chat_template(
                req.messages, tokenize=False, add_generation_prompt=req.add_generation_prompt,
                **req.chat_template_kwargs,
            )
        except Exception as exc:  # a template that rejects these messages is the caller's 400
            raise InvalidRequestError(f"The chat template could not render the messages: {exc}") from exc
        check_prompt_chars(text, tokenizer, self.engine.max_model_len)
        # the request's strings were checked when parsed; kwargs may still render a lone
        # surrogate, on which the tokenizer raises
        if not is_text(text):
            raise InvalidRequestError(
                "The prompt must be valid Unicode text (it has a lone surrogate)"
            )
        # the template writes any special tokens itself, as in vLLM
        return list(tokenizer.encode(text, add_special_tokens=False))

    async def create(self, request: web.Request, body: Any) -> web.StreamResponse:
        req = ChatCompletionRequest.parse(body)
        check_request_size(self.limits, 1, req.sampling.n)
        lora = await self.models.resolve(req.model)
        model_name = req.model or self.models.base_model_name
        prompt = await on_tokenizer_thread(self._render, req)
        params = sampling_params(req.sampling, len(prompt), self.engine.max_model_len)
        head = {"id": random_id("chatcmpl"), "created": now(), "model": model_name}
        usage = Usage([len(prompt)])
        outputs = merged(self.engine, [prompt], params, head["id"], lora)
        try:
            if req.stream:
                chunks = _chunks(outputs, head, req.sampling, req.include_usage, usage)
                return await SSEStream(request).run(chunks)
            return await _whole(outputs, head, req.sampling.logprobs, usage)
        finally:
            await outputs.aclose()


async def _whole(outputs: Outputs, head: dict, top: int | None, usage: Usage) -> web.Response:
    final: RequestOutput | None = None
    async for index, out in outputs:
        usage.observe(index, out)
        final = out
        for comp in out.outputs:  # a failed choice ends the request now, aborting the rest
            raise_if_failed(comp, comp.index)
    choices = [
        {"index": comp.index, "message": {"role": "assistant", "content": comp.text},
         "logprobs": None if top is None else chat_logprobs(comp.token_ids, comp.logprobs, top),
         "finish_reason": comp.finish_reason, "stop_reason": comp.stop_reason}
        for comp in (final.outputs if final else [])
    ]
    body = {**head, "object": "chat.completion", "choices": choices, "usage": usage.usage()}
    if final is not None and final.prompt_logprobs is not None:
        body["prompt_logprobs"] = vllm_prompt_logprobs(final.prompt_logprobs)
    return web.json_response(body)


def _chunk(
    head: dict, index: int, delta: dict, finish_reason: str | None,
    stop_reason: str | int | None = None, logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason,
              "stop_reason": stop_reason}
    return {**head, "object": "chat.completion.chunk", "choices": [choice]}


async def _chunks(
    outputs: Outputs, head: dict, sampling: SamplingFields, include_usage: bool, usage: Usage
) -> AsyncIterator[dict[str, Any]]:
    """A role chunk per choice first (as OpenAI sends it), then content deltas, each with the
    logprobs of the tokens generated since the choice's previous chunk when asked for.

    The first engine output is awaited before the role chunks so that an engine error at
    admission still reaches the client as an HTTP status rather than an in-band event. A
    choice that failed in the engine sends its last chunk (finish_reason "error") and ends
    the stream with an error event.
    """
    first = await anext(outputs, None)
    for index in range(sampling.n):
        yield _chunk(head, index, {"role": "assistant", "content": ""}, None)
    sent: dict[int, int] = {}
    sent_tokens: dict[int, int] = {}
    finished: set[int] = set()
    async for prompt_index, out in _prepend(first, outputs):
        usage.observe(prompt_index, out)
        for comp in out.outputs:
            text = streamable(comp.text, comp.finish_reason is not None)
            delta = text[sent.get(comp.index, 0):]
            if comp.index in finished or (not delta and comp.finish_reason is None):
                continue
            logprobs = None
            if sampling.logprobs is not None:
                start = sent_tokens.get(comp.index, 0)
                logprobs = chat_logprobs(comp.token_ids[start:], comp.logprobs[start:],
                                         sampling.logprobs)
                sent_tokens[comp.index] = len(comp.token_ids)
            sent[comp.index] = len(text)
            if comp.finish_reason is not None:
                finished.add(comp.index)
            yield _chunk(head, comp.index, {"content": delta} if delta else {}, comp.finish_reason,
                         comp.stop_reason, logprobs)
            raise_if_failed(comp, comp.index)
    if include_usage:
        yield {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage.usage()}


async def _prepend(first: tuple[int, RequestOutput] | None, rest: Outputs) -> Outputs:
    if first is not None:
        yield first
    async for item in rest:
        yield item
