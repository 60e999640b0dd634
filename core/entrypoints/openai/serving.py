"""The serving core: a route and a parsed body in; a ``ServingResponse`` out.

No transport's types here, so the aiohttp app and any other front end (a Ray Serve ingress)
serve the same bytes by calling ``OpenAIServing.handle`` directly. Exceptions become
OpenAI-shaped errors in one place, ``handle``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from loraserve import metrics
from loraserve.entrypoints.openai.errors import NotFoundError, error_response
from loraserve.entrypoints.openai.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from loraserve.entrypoints.openai.responses import ServingResponse, json_response, text_response
from loraserve.entrypoints.openai.serving_chat import ServingChat
from loraserve.entrypoints.openai.serving_completion import ServingCompletion
from loraserve.entrypoints.openai.serving_models import ServingModels
from loraserve.version import __version__

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine
    from loraserve.entrypoints.openai.server_config import ServerConfig

Route = tuple[str, str]  # (method, path)
Handler = Callable[[Any], Awaitable[ServingResponse]]


class OpenAIServing:
    """The OpenAI-compatible routes over one engine; load/unload only with runtime updating."""

    def __init__(self, engine: AsyncLLMEngine, config: ServerConfig) -> None:
        self.models = ServingModels(
            engine, config.allow_runtime_lora_updating, config.served_model_aliases
        )
        self.completion = ServingCompletion(engine, self.models, config.limits)
        self.chat = ServingChat(engine, self.models, config.limits)
        self.routes: dict[Route, Handler] = {
            ("GET", "/health"): self._health,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/version"): self._version,
            ("GET", "/v1/models"): self._list_models,
            ("POST", "/v1/completions"): self.completion.create,
            ("POST", "/v1/chat/completions"): self.chat.create,
        }
        if config.allow_runtime_lora_updating:
            self.routes[("POST", "/v1/load_lora_adapter")] = self._load_lora
            self.routes[("POST", "/v1/unload_lora_adapter")] = self._unload_lora

    async def handle(self, method: str, path: str, body: Any = None) -> ServingResponse:
        """Answer one request; ``body`` is the decoded JSON body (None for a GET)."""
        try:
            handler = self.routes.get((method, path))
            if handler is None:
                raise NotFoundError("Not Found")
            return await handler(body)
        except Exception as exc:  # the one place exceptions become statuses
            return error_response(exc)

    async def _health(self, _: Any) -> ServingResponse:
        return ServingResponse(200)

    async def _metrics(self, _: Any) -> ServingResponse:
        return ServingResponse(200, {"Content-Type": CONTENT_TYPE_LATEST},
                               generate_latest(metrics.REGISTRY))

    async def _version(self, _: Any) -> ServingResponse:
        return json_response({"version": __version__})

    async def _list_models(self, _: Any) -> ServingResponse:
        return json_response(self.models.list_models())

    async def _load_lora(self, body: Any) -> ServingResponse:
        return text_response(await self.models.load(LoadLoRAAdapterRequest.parse(body)))

    async def _unload_lora(self, body: Any) -> ServingResponse:
        return text_response(await self.models.unload(UnloadLoRAAdapterRequest.parse(body)))
