"""``POST /tokenize`` and ``POST /detokenize`` with vLLM's bodies: the server's own tokenizer
for clients that count or build prompts (lm-eval's ``local-completions`` uses them).

Tokenize takes ``prompt`` (special tokens added by default) or chat ``messages`` (rendered by
the chat template that chat completions use; no extra special tokens by default) and answers
``{"count", "max_model_len", "tokens", "token_strs"}``; detokenize takes ``tokens`` and
answers ``{"prompt"}``, special tokens included, as ``tokenizer.decode`` gives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loraserve.entrypoints.openai.prompts import chat_token_ids, on_tokenizer_thread
from loraserve.entrypoints.openai.protocol import (
    _field,
    _is_token_ids,
    _require_object,
    parse_messages,
)
from loraserve.entrypoints.openai.request_values import check_token_ids, show
from loraserve.entrypoints.openai.responses import ServingResponse, json_response
from loraserve.errors import InvalidRequestError

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine
    from loraserve.entrypoints.openai.server_config import ServerConfig
    from loraserve.entrypoints.openai.serving_models import ServingModels

UNTRUSTED_TEMPLATE = (  # vLLM's words
    "Chat template is passed with request, but --trust-request-chat-template is not set. "
    "Refused request with untrusted chat template."
)


@dataclass
class TokenizeRequest:
    model: str | None
    prompt: str | None  # the completion form
    messages: list[dict[str, str]] | None  # the chat form
    add_special_tokens: bool
    return_token_strs: bool
    template_kwargs: dict[str, Any]  # the chat form's: generation prompt, tools, template, ...

    @classmethod
    def parse(cls, body: Any) -> TokenizeRequest:
        body = _require_object(body)
        model = _field(body, "model", "str")
        token_strs = bool(_field(body, "return_token_strs", "bool", False))
        if body.get("messages") is None:
            prompt = _field(body, "prompt", "str")
            if prompt is None:
                raise InvalidRequestError("'prompt' (a string) or 'messages' is required")
            return cls(model, prompt, None, _field(body, "add_special_tokens", "bool", True),
                       token_strs, {})
        if body.get("continue_final_message") and body.get("add_generation_prompt"):
            raise InvalidRequestError(
                "Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        tools = _field(body, "tools", "list")
        if tools is not None and not all(isinstance(t, dict) for t in tools):
            raise InvalidRequestError(f"'tools' must be an array of objects, got {show(tools)}")
        extra = dict(_field(body, "chat_template_kwargs", "dict", {}))
        template = _field(body, "chat_template", "str") or _field(extra, "chat_template", "str")
        kwargs = {
            **extra,
            "add_generation_prompt": _field(body, "add_generation_prompt", "bool", True),
            "continue_final_message": _field(body, "continue_final_message", "bool", False),
            "chat_template": template,  # the request's own, if any (trusted or refused)
            "tools": tools,
        }
        return cls(model, None, parse_messages(body),
                   _field(body, "add_special_tokens", "bool", False), token_strs, kwargs)


class ServingTokenization:
    def __init__(self, engine: AsyncLLMEngine, models: ServingModels, config: ServerConfig) -> None:
        self.engine = engine
        self.models = models
        self.chat_template = config.chat_template
        self.trust_request_chat_template = config.trust_request_chat_template

    async def tokenize(self, body: Any) -> ServingResponse:
        req = TokenizeRequest.parse(body)
        await self.models.resolve(req.model)  # an unknown model is a 404, as everywhere
        kwargs = dict(req.template_kwargs)
        if kwargs.get("chat_template") is None:
            kwargs["chat_template"] = self.chat_template
        elif not self.trust_request_chat_template:
            raise InvalidRequestError(UNTRUSTED_TEMPLATE)
        ids, strs = await on_tokenizer_thread(self._tokenize, req, kwargs)
        return json_response({"count": len(ids), "max_model_len": self.engine.max_model_len,
                              "tokens": ids, "token_strs": strs})

    def _tokenize(self, req: TokenizeRequest, kwargs: dict[str, Any]) -> tuple[list[int], Any]:
        tokenizer, context = self.engine.tokenizer, self.engine.context
        if req.messages is not None:
            ids = chat_token_ids(tokenizer, context, req.messages, self.models.base_model_name,
                                 completion_tokens=0, add_special_tokens=req.add_special_tokens,
                                 **kwargs)
        else:
            context.check_chars(len(req.prompt), tokenizer.max_token_chars, 0)
            ids = list(tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens))
        context.check(len(ids), 0)
        return ids, token_strings(tokenizer, ids) if req.return_token_strs else None

    async def detokenize(self, body: Any) -> ServingResponse:
        body = _require_object(body)
        tokens = body.get("tokens")
        if not _is_token_ids(tokens):
            raise InvalidRequestError(f"'tokens' must be an array of token ids, got {show(tokens)}")
        check_token_ids("tokens", tokens)
        await self.models.resolve(_field(body, "model", "str"))
        vocabulary = len(self.engine.tokenizer)
        if outside := sorted({t for t in tokens if not 0 <= t < vocabulary}):
            raise InvalidRequestError(
                f"'tokens' has token ids outside the vocabulary [0, {vocabulary}): {outside[:8]}")
        self.engine.context.check(len(tokens), 0)
        text = await on_tokenizer_thread(self.engine.tokenizer.decode, tokens, False)
        return json_response({"prompt": text})


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each id's vocabulary entry (``Ġhello``), as transformers' ``convert_ids_to_tokens``."""
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    if convert is not None:
        return list(convert(ids))
    # loraserve's Tokenizer has no public id-to-token yet: ask its backend, which has one
    backend = tokenizer._backend
    if hasattr(backend, "convert_ids_to_tokens"):  # transformers
        return list(backend.convert_ids_to_tokens(ids))
    return [backend.id_to_token(i) for i in ids]  # tokenizers
