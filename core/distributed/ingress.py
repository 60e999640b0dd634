"""The HTTP front of a Ray Serve deployment of loraserve: OpenAI routes over N replicas.

A request's ``model`` (when it names no base-model name) becomes Serve's multiplexed model
id, so the router sends it to a replica that holds the adapter. The ingress answers itself
only what spans replicas: ``/v1/models`` (the union of their adapters), adapter load and
unload (checked on one replica, then written to the shared registry that every replica
applies), and ``/metrics`` (every replica's series, labelled by replica). Everything else is
the serving core on a replica, its bytes passed through.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from loraserve.distributed.registry import AdapterRegistry
from loraserve.distributed.replica import REPLICA_HEADER
from loraserve.distributed.replica_metrics import merge_expositions
from loraserve.entrypoints.openai import schema
from loraserve.entrypoints.openai.auth import check_key, needs_key
from loraserve.entrypoints.openai.errors import NotFoundError, error_response
from loraserve.entrypoints.openai.request_values import parse_json_body
from loraserve.entrypoints.openai.responses import ServingResponse, json_response, text_response
from loraserve.errors import InvalidRequestError, LoRANotFoundError

INGRESS = "ingress"  # the x-loraserve-replica value of answers no replica made


class _ReplicaStream:
    """A replica's SSE chunks; closing it cancels the replica's generator (and the engine
    requests behind it)."""

    def __init__(self, chunks: DeploymentResponseGenerator) -> None:
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks.__aiter__()

    async def aclose(self) -> None:
        self._chunks.cancel()


@serve.deployment
class LoRAIngress:
    def __init__(self, replicas: DeploymentHandle, base_model_names: list[str],
                 api_key: str | None, state_dir: str) -> None:
        self.replicas = replicas
        self.base_model_names = set(base_model_names)
        self.api_key = api_key
        self.registry = AdapterRegistry(state_dir)

    async def __call__(self, request: Request) -> Response:
        try:
            answer = await self._answer(request)
        except Exception as exc:  # a replica lost, a body not JSON: the core's error mapping
            answer = error_response(exc)
        headers = {REPLICA_HEADER: INGRESS, **answer.headers}
        if answer.stream is None:
            return Response(answer.body, answer.status, headers)
        return StreamingResponse(_closing(answer.stream), answer.status, headers)

    async def _answer(self, request: Request) -> ServingResponse:
        method, path = request.method, request.url.path
        if self.api_key and needs_key(path, method):
            raw = dict(request.headers.raw).get(b"authorization", b"")
            check_key(raw, self.api_key)
        body = None
        if method == "POST":
            raw_body = await request.body()
            body = parse_json_body(raw_body) if raw_body.strip() else None
        if (method, path) == ("GET", "/v1/models"):
            return await self._models()
        if method == "GET" and path.startswith("/v1/models/"):
            return await self._model(path.removeprefix("/v1/models/"))
        if (method, path) == ("POST", "/v1/load_lora_adapter"):
            return await self._load(body)
        if (method, path) == ("POST", "/v1/unload_lora_adapter"):
            return await self._unload(body)
        if path == "/adapters" or path.startswith("/adapters/"):
            raise InvalidRequestError("Under --num-replicas, load and unload adapters with "
                                      "/v1/load_lora_adapter and /v1/unload_lora_adapter")
        if (method, path) == ("GET", "/metrics"):
            return self._metrics()
        model = body.get("model") if isinstance(body, dict) else None
        adapter = model if isinstance(model, str) and model not in self.base_model_names else ""
        return await self.forward(method, path, body, adapter)

    async def forward(self, method: str, path: str, body: object,
                      adapter: str = "") -> ServingResponse:
        """One replica's answer (the router's choice for ``adapter``)."""
        handle = self.replicas.options(stream=True, multiplexed_model_id=adapter)
        chunks = handle.handle.remote(method, path, body)
        status, headers = await chunks.__anext__()
        if headers.get("Content-Type", "").startswith("text/event-stream"):
            return ServingResponse(status, headers, stream=_ReplicaStream(chunks))
        return ServingResponse(status, headers, b"".join([c async for c in chunks]))

    # ---- what spans replicas ---------------------------------------------------------------
    def _adapters(self) -> dict[str, str]:
        """name -> path of every adapter some replica serves, or the registry says all do."""
        entries = self.registry.entries()
        found = {name: path for name, (path, _) in entries.items() if path is not None}
        for report in self.registry.reports():
            for name, path in report.adapters:
                _, unloaded_at = entries.get(name, (None, 0.0))
                if name not in found and report.time > unloaded_at:
                    found[name] = path
        return found

    async def _models(self) -> ServingResponse:
        answer = await self.forward("GET", "/v1/models", None)
        if answer.status != 200:
            return answer
        listing = json.loads(answer.body)
        cards = listing["data"]
        base = next(card for card in cards if card["parent"] is None)
        listed = {card["id"] for card in cards}
        for name, path in self._adapters().items():
            if name not in listed:
                cards.append({**base, "id": name, "root": path, "parent": base["id"]})
        response = json_response(listing)
        response.headers[REPLICA_HEADER] = answer.headers.get(REPLICA_HEADER, INGRESS)
        return response

    async def _model(self, model_id: str) -> ServingResponse:
        listing = json.loads((await self._models()).body)
        for card in listing["data"]:
            if card["id"] == model_id:
                return json_response(card)
        raise LoRANotFoundError(model_id)

    async def _load(self, body: object) -> ServingResponse:
        """Checked and loaded on one replica, then recorded for all of them."""
        request = schema.LoadLoRAAdapterRequest.parse(body)
        name = request.lora_name
        if name and not request.load_inplace and self.registry.entries().get(name, (None,))[0]:
            raise InvalidRequestError(f"The lora adapter '{name}' has already been loaded.")
        answer = await self.forward("POST", "/v1/load_lora_adapter", body)
        if answer.status == 200:
            self.registry.record(name, os.path.abspath(request.lora_path))
        return answer

    async def _unload(self, body: object) -> ServingResponse:
        request = schema.UnloadLoRAAdapterRequest.parse(body)
        name = request.lora_name
        if not name:
            raise InvalidRequestError(
                "Under --num-replicas, name the adapter with 'lora_name' (each replica numbers "
                "its adapters itself)" if request.lora_int_id is not None else
                "Either 'lora_name' or 'lora_int_id' needs to be provided.")
        if name not in self._adapters():
            raise NotFoundError(f"The lora adapter '{name}' cannot be found.")
        self.registry.record(name, None)
        return text_response(f"Success: LoRA adapter '{name}' removed successfully")

    def _metrics(self) -> ServingResponse:
        merged = merge_expositions((r.replica, r.metrics) for r in self.registry.reports())
        return ServingResponse(200, {"Content-Type": CONTENT_TYPE_LATEST}, merged)


async def _closing(stream: _ReplicaStream) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    finally:  # the client went away, or the stream ended
        await stream.aclose()
