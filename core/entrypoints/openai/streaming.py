"""Engine outputs to response pieces: prompts run side by side, usage, and SSE bytes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from loraserve.entrypoints.openai.errors import (
    GenerationError,
    error_body,
    log_failure,
    message_of,
    status_of,
)
from loraserve.entrypoints.openai.responses import SSE_HEADERS, ServingResponse

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine
    from loraserve.lora.request import LoRARequest
    from loraserve.outputs import CompletionOutput, RequestOutput
    from loraserve.sampling_params import SamplingParams

Chunks = AsyncIterator[dict[str, Any]]


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def raise_if_failed(comp: CompletionOutput, choice_index: int) -> None:
    """A choice the engine ended with finish_reason "error" fails its request (a 500)."""
    if comp.finish_reason == "error":
        reason = comp.error or "unknown error"
        raise GenerationError(f"choice {choice_index} failed during generation: {reason}")


def streamable(text: str, finished: bool) -> str:
    """The part of a cumulative text that is safe to send as a delta.

    A trailing U+FFFD is usually an incomplete UTF-8 sequence that the next token completes
    (and rewrites), so it is held back until more text arrives or the choice finishes.
    """
    return text if finished else text.rstrip("\ufffd")


async def merged(
    engine: AsyncLLMEngine,
    prompts: list[list[int]],
    params: SamplingParams | list[SamplingParams],
    request_id: str,
    lora_request: LoRARequest | None,
    texts: list[str | None] | None = None,
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Run one engine request per prompt and yield ``(prompt_index, snapshot)`` as they come.
    ``params`` is one for all prompts or one per prompt.

    Leaving early (client gone, error) cancels every pump, which closes the engine's
    generators and so aborts their sequences.
    """
    queue: asyncio.Queue[tuple[int, Any, BaseException | None, bool]] = asyncio.Queue()

    async def pump(index: int) -> None:
        text = texts[index] if texts else None
        mine = params[index] if isinstance(params, list) else params
        gen = engine.generate(prompts[index], mine, f"{request_id}-{index}", lora_request,
                              prompt=text)
        try:
            async for out in gen:
                queue.put_nowait((index, out, None, False))
        except Exception as exc:  # handed to the consumer, which re-raises it
            queue.put_nowait((index, None, exc, False))
        finally:
            await gen.aclose()
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


async def sse_response(chunks: Chunks) -> ServingResponse:
    """A ``text/event-stream`` response: one ``data:`` line per JSON chunk, then ``[DONE]``.

    The first chunk is awaited before the response exists, so errors found before any token
    (unknown adapter, bad params) still get their own status. ``chunks`` must close its engine
    requests when it ends or is closed.
    """
    first = await anext(chunks, None)
    return ServingResponse(200, dict(SSE_HEADERS), stream=EventStream(first, chunks))


class EventStream:
    """The SSE bytes of one response. A later error becomes an error event, as vLLM sends
    it; ``aclose`` (a client gone) closes the chunks and so aborts their sequences."""

    def __init__(self, first: dict[str, Any] | None, chunks: Chunks) -> None:
        self._chunks = chunks
        self._events = self._encode(first)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def aclose(self) -> None:
        await self._events.aclose()
        await self._chunks.aclose()

    async def _encode(self, first: dict[str, Any] | None) -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield _event(first)
            async for chunk in self._chunks:
                yield _event(chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the client in-band
            if status_of(exc) >= 500:
                log_failure("stream failed", exc)
            yield _event(error_body(status_of(exc), message_of(exc)))
        yield b"data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()
