"""``POST /v1/chat/completions``: messages through the tokenizer's chat template."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from loraserve.entrypoints.openai.logprobs import chat_logprobs, vllm_prompt_logprobs
from loraserve.entrypoints.openai.prompts import (
    check_request_size,
    chosen_chat_template,
    on_tokenizer_thread,
    render_chat,
    sampling_params,
)
from loraserve.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    RequestDefaults,
    SamplingFields,
)
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
from loraserve.entrypoints.openai.tool_parsers import ToolParser, tool_parser
from loraserve.entrypoints.openai.tools import (
    ToolReader,
    message_tool_calls,
    tool_choice,
    tool_reader,
)
from loraserve.errors import InvalidRequestError

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine
    from loraserve.entrypoints.openai.server_config import ServerConfig
    from loraserve.entrypoints.openai.serving_models import ServingModels
    from loraserve.outputs import CompletionOutput, RequestOutput

Outputs = AsyncIterator[tuple[int, "RequestOutput"]]


class ServingChat:
    """Renders the conversation to token ids, then runs and shapes it like a completion."""

    def __init__(self, engine: AsyncLLMEngine, models: ServingModels, config: ServerConfig,
                 defaults: RequestDefaults) -> None:
        self.engine = engine
        self.models = models
        self.limits = config.limits
        self.chat_template = config.chat_template  # --chat-template, else the tokenizer's
        self.trust_request_chat_template = config.trust_request_chat_template
        self.response_role = config.response_role
        self.defaults = defaults
        # --enable-auto-tool-choice --tool-call-parser NAME: "auto" tool choice reads calls so
        self.tool_parser: ToolParser | None = (
            tool_parser(config.tool_call_parser)
            if config.enable_auto_tool_choice and config.tool_call_parser else None)

    async def create(self, body: Any) -> ServingResponse:
        req = ChatCompletionRequest.parse(body, self.defaults)
        tools = tool_reader(self._tool_choice(req), self.tool_parser)
        template = chosen_chat_template(req.chat_template, self.chat_template,
                                        self.trust_request_chat_template)
        check_request_size(self.limits, 1, req.sampling.n)
        lora = await self.models.resolve(req.model)
        model_name = req.model or self.models.base_model_name
        engine = self.engine
        prompt = await on_tokenizer_thread(
            render_chat, engine.tokenizer, engine.context, req, self.models.base_model_name,
            template,
        )
        # vLLM's rule: the answer continues the last message's role unless a prompt is added
        role = self.response_role if req.add_generation_prompt else req.messages[-1]["role"]
        params = sampling_params(req.sampling, len(prompt), engine.context)
        head = {"id": random_id("chatcmpl"), "created": now(), "model": model_name}
        usage = Usage([len(prompt)])
        outputs = merged(engine, [prompt], params, head["id"], lora)
        if req.stream:  # the stream owns the outputs from here on
            return await sse_response(
                _chunks(outputs, head, req.sampling, req.include_usage, usage, role,
                        prompt if req.return_token_ids else None, tools))
        try:
            return await _whole(outputs, head, req.sampling.logprobs, usage, role,
                                prompt if req.return_token_ids else None, tools)
        finally:
            await outputs.aclose()

    def _tool_choice(self, req: ChatCompletionRequest):  # noqa: ANN202 - a ToolChoice or None
        """The request's tools; "required" and named calls constrain the text to their schema."""
        choice = tool_choice(req.tools, req.tool_choice, req.parallel_tool_calls,
                             self.tool_parser is not None)
        if choice is not None and choice.constrained:
            if req.sampling.structured is not None:
                raise InvalidRequestError(
                    "tool_choice 'required' or a named function decodes the calls under their "
                    "own schema; it cannot be combined with another structured-output "
                    "constraint", param="tool_choice")
            req.sampling.structured = choice.structured_outputs()
        return choice


async def _whole(outputs: Outputs, head: dict, top: int | None, usage: Usage, role: str,
                 prompt_ids: list[int] | None, tools: ToolReader | None) -> ServingResponse:
    """With ``prompt_ids`` (return_token_ids), the response carries them and each choice its
    token ids, as vLLM's."""
    final: RequestOutput | None = None
    async for index, out in outputs:
        usage.observe(index, out)
        final = out
        for comp in out.outputs:  # a failed choice ends the request now, aborting the rest
            raise_if_failed(comp, comp.index)
    choices = [
        {"index": comp.index, **_message(comp, role, tools),
         "logprobs": None if top is None else chat_logprobs(comp.token_ids, comp.logprobs, top),
         "stop_reason": comp.stop_reason}
        for comp in (final.outputs if final else [])
    ]
    if prompt_ids is not None:
        for choice, comp in zip(choices, final.outputs if final else []):
            choice["token_ids"] = list(comp.token_ids)
    body = {**head, "object": "chat.completion", "choices": choices, "usage": usage.usage()}
    if final is not None and final.prompt_logprobs is not None:
        body["prompt_logprobs"] = vllm_prompt_logprobs(final.prompt_logprobs)
    if prompt_ids is not None:
        body["prompt_token_ids"] = prompt_ids
    return json_response(body)


def _message(comp: CompletionOutput, role: str, tools: ToolReader | None) -> dict[str, Any]:
    """A finished choice's message and finish_reason: its tool calls, if it made any."""
    content, calls = tools.finish(comp.text, comp.finish_reason) if tools else (comp.text, [])
    if not calls:
        return {"message": {"role": role, "content": comp.text},
                "finish_reason": comp.finish_reason}
    return {"message": {"role": role, "content": content,
                        "tool_calls": message_tool_calls(calls)},
            "finish_reason": "tool_calls"}


def _tool_call_chunks(head: dict, index: int, content: str | None, sent: int,
                      calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rest of a choice's content, then each call as OpenAI streams it: its id and name
    with empty arguments, then the arguments."""
    chunks = []
    if content and content[sent:]:
        chunks.append(_chunk(head, index, {"content": content[sent:]}, None))
    for number, call in enumerate(calls):
        opening = {**call, "index": number, "function": {**call["function"], "arguments": ""}}
        chunks.append(_chunk(head, index, {"tool_calls": [opening]}, None))
        arguments = {"index": number, "function": {"arguments": call["function"]["arguments"]}}
        chunks.append(_chunk(head, index, {"tool_calls": [arguments]}, None))
    return chunks


def _chunk(
    head: dict, index: int, delta: dict, finish_reason: str | None,
    stop_reason: str | int | None = None, logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason,
              "stop_reason": stop_reason}
    return {**head, "object": "chat.completion.chunk", "choices": [choice]}


async def _chunks(
    outputs: Outputs, head: dict, sampling: SamplingFields, include_usage: bool, usage: Usage,
    role: str, prompt_ids: list[int] | None = None, tools: ToolReader | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """A role chunk per choice first (as OpenAI sends it), then content deltas, each with the
    logprobs of the tokens generated since the choice's previous chunk when asked for.

    The first engine output is awaited before the role chunks so that an engine error at
    admission still reaches the client as an HTTP status rather than an in-band event. A
    choice that failed in the engine sends its last chunk (finish_reason "error") and ends
    the stream with an error event. Ending or closing the chunks closes ``outputs``. With
    ``prompt_ids`` (return_token_ids), the first chunk carries them and each delta its
    token ids, as vLLM's.
    """
    try:
        async for chunk in _choice_chunks(outputs, head, sampling, include_usage, usage, role,
                                          prompt_ids, tools):
            yield chunk
    finally:
        await outputs.aclose()


async def _choice_chunks(
    outputs: Outputs, head: dict, sampling: SamplingFields, include_usage: bool, usage: Usage,
    role: str, prompt_ids: list[int] | None, tools: ToolReader | None,
) -> AsyncIterator[dict[str, Any]]:
    first = await anext(outputs, None)
    for index in range(sampling.n):
        chunk = _chunk(head, index, {"role": role, "content": ""}, None)
        if prompt_ids is not None and index == 0:
            chunk["prompt_token_ids"] = prompt_ids
        yield chunk
    sent: dict[int, int] = {}
    sent_tokens: dict[int, int] = {}
    finished: set[int] = set()
    async for prompt_index, out in _prepend(first, outputs):
        usage.observe(prompt_index, out)
        for comp in out.outputs:
            text = streamable(comp.text, comp.finish_reason is not None)
            finish_reason = comp.finish_reason
            if tools is not None and finish_reason is None:
                text = tools.shown(text)
            elif tools is not None and comp.index not in finished:
                content, calls = tools.finish(comp.text, finish_reason)
                if calls:  # the calls go out as tool_calls deltas, the final chunk is empty
                    for chunk in _tool_call_chunks(head, comp.index, content,
                                                   sent.get(comp.index, 0),
                                                   message_tool_calls(calls)):
                        yield chunk
                    text, finish_reason = text[:sent.get(comp.index, 0)], "tool_calls"
            delta = text[sent.get(comp.index, 0):]
            if comp.index in finished or (not delta and finish_reason is None):
                continue
            logprobs = None
            start = sent_tokens.get(comp.index, 0)
            if sampling.logprobs is not None:
                logprobs = chat_logprobs(comp.token_ids[start:], comp.logprobs[start:],
                                         sampling.logprobs)
            sent_tokens[comp.index] = len(comp.token_ids)
            sent[comp.index] = len(text)
            if finish_reason is not None:
                finished.add(comp.index)
            chunk = _chunk(head, comp.index, {"content": delta} if delta else {},
                           finish_reason, comp.stop_reason, logprobs)
            if prompt_ids is not None:
                chunk["choices"][0]["token_ids"] = list(comp.token_ids[start:])
            yield chunk
            raise_if_failed(comp, comp.index)
    if include_usage:
        yield {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage.usage()}


async def _prepend(first: tuple[int, RequestOutput] | None, rest: Outputs) -> Outputs:
    if first is not None:
        yield first
    async for item in rest:
        yield item
