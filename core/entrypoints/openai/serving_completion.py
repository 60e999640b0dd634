"""``POST /v1/completions``: text or token-id prompts, whole or streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiohttp import web

from loraserve.entrypoints.openai.generation import (
    SSEStream,
    Usage,
    check_prompt_chars,
    merged,
    now,
    on_tokenizer_thread,
    random_id,
    sampling_params,
    streamable,
)
from loraserve.entrypoints.openai.logprobs import completion_logprobs
from loraserve.entrypoints.openai.protocol import CompletionRequest

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine
    from loraserve.entrypoints.openai.serving_models import ServingModels
    from loraserve.outputs import CompletionOutput, RequestOutput

Outputs = AsyncIterator[tuple[int, "RequestOutput"]]


class ServingCompletion:
    """Tokenizes prompts, runs them as one engine request each, and shapes the answer."""

    def __init__(self, engine: AsyncLLMEngine, models: ServingModels) -> None:
        self.engine = engine
        self.models = models

    def _tokenize(self, prompts: list[str | list[int]]) -> list[list[int]]:
        tokenizer = self.engine.tokenizer
        for text in (p for p in prompts if isinstance(p, str)):
            check_prompt_chars(text, tokenizer, self.engine.max_model_len)
        return [p if isinstance(p, list) else list(tokenizer.encode(p)) for p in prompts]

    async def create(self, request: web.Request, body: Any) -> web.StreamResponse:
        req = CompletionRequest.parse(body)
        lora = await self.models.resolve(req.model)
        model_name = req.model or self.models.base_model_name
        prompts = await on_tokenizer_thread(self._tokenize, req.prompts)
        # completions always have a max_tokens (default 16), so one params object serves all
        params = [sampling_params(req.sampling, len(p), self.engine.max_model_len) for p in prompts]
        head = {"id": random_id("cmpl"), "object": "text_completion", "created": now(),
                "model": model_name}
        usage = Usage([len(p) for p in prompts])
        texts = [p if isinstance(p, str) else None for p in req.prompts]
        outputs = merged(self.engine, prompts, params[0], head["id"], lora, texts)
        # with echo, each choice's text starts with its prompt's (token prompts decoded)
        echoes = [""] * len(prompts)
        if req.echo:
            decode = self.engine.tokenizer.decode
            echoes = [t if t is not None else decode(p) for t, p in zip(texts, prompts)]
        try:
            if req.stream:
                chunks = _chunks(outputs, head, req.sampling.n, req.include_usage, usage, echoes)
                return await SSEStream(request).run(chunks)
            return await _whole(outputs, head, req.sampling.n, usage, echoes)
        finally:
            await outputs.aclose()


def _choice(
    index: int, text: str, comp: CompletionOutput, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs,
            "finish_reason": comp.finish_reason, "stop_reason": comp.stop_reason}


async def _whole(
    outputs: Outputs, head: dict, n: int, usage: Usage, echoes: list[str]
) -> web.Response:
    final: dict[int, RequestOutput] = {}
    async for index, out in outputs:
        usage.observe(index, out)
        final[index] = out
    choices = [
        _choice(index * n + comp.index, echoes[index] + comp.text, comp,
                None if comp.logprobs is None else completion_logprobs(comp.token_ids, comp.logprobs))
        for index in sorted(final)
        for comp in final[index].outputs
    ]
    return web.json_response({**head, "choices": choices, "usage": usage.usage()})


async def _chunks(
    outputs: Outputs, head: dict, n: int, include_usage: bool, usage: Usage, echoes: list[str]
) -> AsyncIterator[dict[str, Any]]:
    """One chunk per new piece of text of one choice; the last carries its finish_reason.

    A chunk's logprobs cover the tokens generated since the choice's previous chunk.
    """
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
            logprobs = None
            if comp.logprobs is not None:
                first = sent_tokens.get(key, 0)
                logprobs = completion_logprobs(comp.token_ids[first:], comp.logprobs[first:],
                                               text_offset=sent.get(key, 0))
                sent_tokens[key] = len(comp.token_ids)
            if key not in sent:
                delta = echoes[index] + delta
            sent[key] = len(text)
            if comp.finish_reason is not None:
                finished.add(key)
            yield {**head, "choices": [_choice(index * n + comp.index, delta, comp, logprobs)]}
    if include_usage:
        yield {**head, "choices": [], "usage": usage.usage()}
