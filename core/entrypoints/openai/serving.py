"""The serving core: a route and a parsed body in; a ``ServingResponse`` out.

No transport's types here, so the aiohttp app and any other front end (a Ray Serve ingress)
serve the same bytes by calling ``OpenAIServing.handle`` directly. Exceptions become
OpenAI-shaped errors in one place, ``handle``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import choose_encoder

from loraserve import metrics
from loraserve.entrypoints.openai import schema
from loraserve.entrypoints.openai.errors import NotFoundError, error_response
from loraserve.entrypoints.openai.openapi import docs_page, openapi_document
from loraserve.entrypoints.openai.protocol import RequestDefaults
from loraserve.entrypoints.openai.responses import ServingResponse, json_response, text_response
from loraserve.entrypoints.openai.routes import RouteTable
from loraserve.entrypoints.openai.serving_chat import ServingChat
from loraserve.entrypoints.openai.serving_completion import ServingCompletion
from loraserve.entrypoints.openai.serving_models import ServingModels
from loraserve.entrypoints.openai.serving_sagemaker import ServingSageMaker
from loraserve.entrypoints.openai.serving_tokenization import ServingTokenization
from loraserve.version import __version__

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine
    from loraserve.entrypoints.openai.server_config import ServerConfig


class OpenAIServing:
    """The OpenAI-compatible routes over one engine; load/unload only with runtime updating."""

    def __init__(self, engine: AsyncLLMEngine, config: ServerConfig) -> None:
        self.models = ServingModels(
            engine, config.allow_runtime_lora_updating, config.served_model_aliases
        )
        defaults = RequestDefaults(engine.max_logprobs, engine.sampling_defaults)
        self.completion = ServingCompletion(engine, self.models, config.limits, defaults)
        self.chat = ServingChat(engine, self.models, config, defaults)
        self.tokenization = ServingTokenization(engine, self.models, config)
        sagemaker = ServingSageMaker(self.models, self.completion, self.chat)
        self.routes = RouteTable()
        chat_body, completion_body = (schema.ChatCompletionBody,), (schema.CompletionBody,)
        for method, path, handler, body in [
            ("GET", "/health", self._health, ()),
            ("GET", "/ping", sagemaker.ping, ()),
            ("POST", "/ping", sagemaker.ping, ()),
            ("GET", "/metrics", self._metrics, ()),
            ("GET", "/version", self._version, ()),
            ("GET", "/openapi.json", self._openapi, ()),
            ("GET", "/docs", self._docs, ()),
            ("GET", "/v1/models", self._list_models, ()),
            ("GET", "/v1/models/{model_id}", self._retrieve_model, ()),
            ("POST", "/v1/completions", self.completion.create, completion_body),
            ("POST", "/v1/chat/completions", self.chat.create, chat_body),
            ("POST", "/tokenize", self.tokenization.tokenize,
             (schema.TokenizeCompletionBody, schema.TokenizeChatBody)),
            ("POST", "/detokenize", self.tokenization.detokenize, (schema.DetokenizeBody,)),
            ("POST", "/invocations", sagemaker.invocations, completion_body + chat_body),
        ]:
            self.routes.add(method, path, handler, body)
        if config.enable_tokenizer_info_endpoint:
            self.routes.add("GET", "/tokenizer_info", self.tokenization.tokenizer_info)
        if config.allow_runtime_lora_updating:
            self.routes.add("POST", "/v1/load_lora_adapter", self._load_lora,
                            (schema.LoadLoRAAdapterRequest,))
            self.routes.add("POST", "/v1/unload_lora_adapter", self._unload_lora,
                            (schema.UnloadLoRAAdapterRequest,))
            self.routes.add("POST", "/adapters", sagemaker.load_adapter,
                            (schema.SageMakerLoadAdapterRequest,))
            self.routes.add("DELETE", "/adapters/{name}", sagemaker.unload_adapter)
        self._openapi_document: dict[str, Any] | None = None

    async def handle(self, method: str, path: str, body: Any = None) -> ServingResponse:
        """Answer one request; ``body`` is the decoded JSON body (None for a GET). Path
        parameters (``/v1/models/{model_id}``) are matched here, from ``path``."""
        try:
            found = self.routes.match(method, path)
            if found is None:
                raise NotFoundError("Not Found")
            handler, parameters = found
            return await handler(body, **parameters)
        except Exception as exc:  # the one place exceptions become statuses
            return error_response(exc)

    async def _health(self, _: Any) -> ServingResponse:
        return ServingResponse(200)

    async def _metrics(self, _: Any) -> ServingResponse:
        """What prometheus_client's aiohttp handler (the aiohttp app's /metrics) answers a
        scrape that names no format: the same registry, encoder and content type."""
        encode, content_type = choose_encoder("")
        return ServingResponse(200, {"Content-Type": content_type}, encode(metrics.REGISTRY))

    async def _version(self, _: Any) -> ServingResponse:
        return json_response({"version": __version__})

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document of this server's routes, made on first use."""
        if self._openapi_document is None:
            self._openapi_document = openapi_document(self.routes, "loraserve")
        return self._openapi_document

    async def _openapi(self, _: Any) -> ServingResponse:
        return json_response(self.openapi())

    async def _docs(self, _: Any) -> ServingResponse:
        return ServingResponse(200, {"Content-Type": "text/html; charset=utf-8"},
                               docs_page(self.openapi()).encode())

    async def _list_models(self, _: Any) -> ServingResponse:
        return json_response(self.models.list_models())

    async def _retrieve_model(self, _: Any, model_id: str) -> ServingResponse:
        return json_response(self.models.model_card(model_id))

    async def _load_lora(self, body: Any) -> ServingResponse:
        return text_response(await self.models.load(schema.LoadLoRAAdapterRequest.parse(body)))

    async def _unload_lora(self, body: Any) -> ServingResponse:
        return text_response(
            await self.models.unload(schema.UnloadLoRAAdapterRequest.parse(body)))
