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

from loraserve.entrypoints.openai.prompts import (
    chat_token_ids,
    chosen_chat_template,
    on_tokenizer_thread,
)
from loraserve.entrypoints.openai.protocol import chat_template_inputs
from loraserve.entrypoints.openai.responses import ServingResponse, json_response
from loraserve.entrypoints.openai.schema import (
    DetokenizeBody,
    TokenizeChatBody,
    TokenizeCompletionBody,
)
from loraserve.errors import InvalidRequestError

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine
    from loraserve.entrypoints.openai.server_config import ServerConfig
    from loraserve.entrypoints.openai.serving_models import ServingModels



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
        if not isinstance(body, dict) or body.get("messages") is None:
            if isinstance(body, dict) and body.get("prompt") is None:
                raise InvalidRequestError("'prompt' (a string) or 'messages' is required",
                                          param="prompt")
            plain = TokenizeCompletionBody.parse(body)
            return cls(plain.model or None, plain.prompt, None, plain.add_special_tokens,
                       plain.return_token_strs, {})
        chat = TokenizeChatBody.parse(body)
        rules, template = chat_template_inputs(chat)
        kwargs = {
            **rules["extra"],
            "add_generation_prompt": rules["add_generation_prompt"],
            "continue_final_message": rules["continue_final_message"],
            "chat_template": template,  # the request's own, if any (trusted or refused)
            "tools": chat.tools,
        }
        return cls(chat.model or None, None, [m.as_template_input() for m in chat.messages],
                   bool(chat.add_special_tokens), chat.return_token_strs, kwargs)


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
        kwargs["chat_template"] = chosen_chat_template(
            kwargs.get("chat_template"), self.chat_template, self.trust_request_chat_template)
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

    async def tokenizer_info(self, _: Any) -> ServingResponse:
        """vLLM's ``GET /tokenizer_info``: the special tokens and chat template a client needs
        to tokenize as the server does (only with ``--enable-tokenizer-info-endpoint``)."""
        tokenizer = self.engine.tokenizer
        return json_response({
            "tokenizer_class": type(tokenizer).__name__,
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
            "pad_token": tokenizer.pad_token,
            "unk_token": tokenizer.unk_token,
            "chat_template": self.chat_template or tokenizer.chat_template,
            "model_max_length": self.engine.max_model_len,
        })

    async def detokenize(self, body: Any) -> ServingResponse:
        if isinstance(body, dict) and body.get("tokens") is None:
            raise InvalidRequestError("'tokens' must be an array of token ids, got None",
                                      param="tokens")
        req = DetokenizeBody.parse(body)
        tokens = req.tokens
        await self.models.resolve(req.model or None)
        vocabulary = len(self.engine.tokenizer)
        if outside := sorted({t for t in tokens if not 0 <= t < vocabulary}):
            raise InvalidRequestError(
                f"'tokens' has token ids outside the vocabulary [0, {vocabulary}): {outside[:8]}",
                param="tokens")
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
