"""What completions and chat share: limits, sampling params, merged streams, SSE and usage."""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from aiohttp import web

from loraserve.entrypoints.openai.errors import (
    GenerationError,
    error_body,
    log_failure,
    message_of,
    status_of,
)
from loraserve.entrypoints.openai.protocol import SamplingFields
from loraserve.entrypoints.openai.server_config import RequestLimits
from loraserve.errors import InvalidRequestError
from loraserve.sampling_params import SamplingParams

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine
    from loraserve.lora.request import LoRARequest
    from loraserve.outputs import CompletionOutput, RequestOutput


# One thread does all tokenizing and chat rendering: a multi-megabyte prompt never stalls the
# event loop, and a tokenizer (not every backend is thread-safe) is never used by two at once.
_TOKENIZER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraserve-tokenizer")


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


def raise_if_failed(comp: CompletionOutput, choice_index: int) -> None:
    """A choice the engine ended with finish_reason "error" fails its request (a 500)."""
    if comp.finish_reason == "error":
        reason = comp.error or "unknown error"
        raise GenerationError(f"choice {choice_index} failed during generation: {reason}")


_NORMALIZATION_SLACK = 4  # a normalizer may fold a few characters into one (NFKC, say)


def check_prompt_chars(text: str, tokenizer: Any, max_model_len: int) -> None:
    """Refuse a text too long for the context whatever it tokenizes to, before tokenizing it:
    a multi-megabyte prompt would otherwise hold the tokenizer thread for seconds."""
    limit = max_model_len * tokenizer.max_token_chars * _NORMALIZATION_SLACK
    if len(text) > limit:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, the "
            f"prompt has {len(text)} characters, more than that many tokens can hold. Please "
            "reduce the length of the prompt."
        )


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sampling_params(fields: SamplingFields, prompt_len: int, max_model_len: int) -> SamplingParams:
    """Check the context limit (vLLM's message) and build the engine's params.

    No ``max_tokens`` means "up to the context limit", as vLLM does for chat.
    """
    room = max_model_len - prompt_len
    max_tokens = fields.max_tokens if fields.max_tokens is not None else room
    if room < 1 or max_tokens > room:
        raise InvalidRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + max(max_tokens, 1)} tokens ({prompt_len} in the messages, "
            f"{max(max_tokens, 1)} in the completion). Please reduce the length of the "
            "messages or completion."
        )
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
    )


async def merged(
    engine: AsyncLLMEngine,
    prompts: list[list[int]],
    params: SamplingParams,
    request_id: str,
    lora_request: LoRARequest | None,
    texts: list[str | None] | None = None,
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Run one engine request per prompt and yield ``(prompt_index, snapshot)`` as they come.

    Leaving early (client gone, error) cancels every pump, which closes the engine's
    generators and so aborts their sequences.
    """
    queue: asyncio.Queue[tuple[int, Any, BaseException | None, bool]] = asyncio.Queue()

    async def pump(index: int) -> None:
        text = texts[index] if texts else None
        gen = engine.generate(prompts[index], params, f"{request_id}-{index}", lora_request,
                              prompt=text)
        try:
            async for out in gen:
                queue.put_nowait((index, out, None, False))
        except Exception as exc:  # handed to the consumer, which re-raises it
            queue.put_nowait((index, None, exc, False))
        finally:
            await _close(gen)
            queue.put_nowait((index, None, None, True))

    tasks = [asyncio.ensure_future(pump(i)) for i in range(len(prompts))]
    try:
        remaining = len(tasks)
        while remaining:
            index, out, exc, done = await queue.get()
            if exc is not None:
                raise exc
            if done:
                remaining -= 1
            else:
                yield index, out
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close(gen: Any) -> None:
    aclose = getattr(gen, "aclose", None)
    if aclose is not None:
        await aclose()


def now() -> int:
    return int(time.time())


class SSEStream:
    """A ``text/event-stream`` response: one ``data:`` line per JSON chunk, then ``[DONE]``.

    The first chunk is awaited before the headers go out, so errors found before any token
    (unknown adapter, bad params) still get their own HTTP status. A later error becomes an
    error event, as vLLM sends it; a client that has gone simply ends the stream.
    """

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )

    async def _send(self, payload: dict[str, Any]) -> None:
        await self.response.write(f"data: {json.dumps(payload)}\n\n".encode())

    async def run(self, chunks: AsyncIterator[dict[str, Any]]) -> web.StreamResponse:
        first = await anext(chunks, None)
        await self.response.prepare(self.request)
        try:
            if first is not None:
                await self._send(first)
            async for chunk in chunks:
                await self._send(chunk)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the client in-band
            if status_of(exc) >= 500:
                log_failure("stream failed", exc)
            await self._send(error_body(status_of(exc), message_of(exc)))
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()
        return self.response


class Usage:
    """OpenAI's ``usage``: each prompt counted once, every choice's generated tokens.

    (Prometheus counters for requests, tokens and time to first token live in the engine,
    which sees every request, offline ones included.)
    """

    def __init__(self, prompt_lens: list[int], count_completions: bool = True) -> None:
        self.prompt_lens = prompt_lens
        self.count_completions = count_completions  # False when the answer is the prompt alone
        self.completion_tokens: dict[tuple[int, int], int] = {}

    def observe(self, prompt_index: int, out: RequestOutput) -> None:
        for comp in out.outputs:
            count = len(comp.token_ids) if self.count_completions else 0
            self.completion_tokens[(prompt_index, comp.index)] = count

    def usage(self) -> dict[str, int]:
        prompt = sum(self.prompt_lens)
        completion = sum(self.completion_tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}


def streamable(text: str, finished: bool) -> str:
    """The part of a cumulative text that is safe to send as a delta.

    A trailing U+FFFD is usually an incomplete UTF-8 sequence that the next token completes
    (and rewrites), so it is held back until more text arrives or the choice finishes.
    """
    return text if finished else text.rstrip("\ufffd")
