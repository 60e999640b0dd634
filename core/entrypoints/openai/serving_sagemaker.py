"""vLLM's SageMaker routes: ``/ping``, ``/invocations`` (chat or completion, chosen from the
body) and ``POST /adapters`` / ``DELETE /adapters/{name}`` (load and unload under SageMaker's
field names, with the same rules as ``/v1/load_lora_adapter``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loraserve.entrypoints.openai.responses import ServingResponse, text_response
from loraserve.entrypoints.openai.schema import (
    LoadLoRAAdapterRequest,
    SageMakerLoadAdapterRequest,
    UnloadLoRAAdapterRequest,
)
from loraserve.errors import InvalidRequestError

if TYPE_CHECKING:
    from loraserve.entrypoints.openai.serving_chat import ServingChat
    from loraserve.entrypoints.openai.serving_completion import ServingCompletion
    from loraserve.entrypoints.openai.serving_models import ServingModels


def invocation_route(body: Any) -> str:
    """Which route an ``/invocations`` body is for, as vLLM decides: one with ``messages`` is a
    chat completion, one with ``prompt`` a completion."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object")
    if body.get("messages") is not None:
        return "chat"
    if body.get("prompt") is not None:
        return "completion"
    raise InvalidRequestError(
        "Cannot find suitable handler for request. Expected one of: ['ChatCompletionRequest', "
        "'CompletionRequest'] (a body with 'messages' or 'prompt')")


class ServingSageMaker:
    def __init__(self, models: ServingModels, completion: ServingCompletion,
                 chat: ServingChat) -> None:
        self.models, self.completion, self.chat = models, completion, chat

    async def ping(self, _: Any) -> ServingResponse:
        return ServingResponse(200)  # vLLM's: the health check's empty 200

    async def invocations(self, body: Any) -> ServingResponse:
        route = invocation_route(body)
        return await (self.chat.create if route == "chat" else self.completion.create)(body)

    async def load_adapter(self, body: Any) -> ServingResponse:
        request = SageMakerLoadAdapterRequest.parse(body)
        if not request.name or not request.src:
            raise InvalidRequestError("Both 'name' and 'src' must be provided.")
        load = LoadLoRAAdapterRequest(lora_name=request.name, lora_path=request.src)
        return text_response(await self.models.load(load))

    async def unload_adapter(self, _: Any, name: str) -> ServingResponse:
        return text_response(await self.models.unload(UnloadLoRAAdapterRequest(lora_name=name)))
