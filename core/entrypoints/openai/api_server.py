"""The aiohttp application: routes, API-key check and the error middleware.

``build_app`` only wires objects together; ``start_server`` loads ``--lora-modules``,
binds the socket and returns a runner the caller cleans up.
"""

from __future__ import annotations

import asyncio
import hmac
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import loraserve
from loraserve import metrics
from loraserve.entrypoints.openai.errors import HTTPError, error_response
from loraserve.entrypoints.openai.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from loraserve.entrypoints.openai.request_values import parse_json_body
from loraserve.entrypoints.openai.server_config import ServerConfig
from loraserve.entrypoints.openai.serving_chat import ServingChat
from loraserve.entrypoints.openai.serving_completion import ServingCompletion
from loraserve.entrypoints.openai.serving_models import ServingModels

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine

MAX_BODY_BYTES = 64 * 1024 * 1024  # long token-id prompts are legitimately large
THREAD_PARSE_BYTES = 1024 * 1024  # larger bodies are decoded on a worker thread
MODELS_KEY = web.AppKey("models", ServingModels)


async def _json_body(request: web.Request) -> object:
    """The decoded body; a large one off the event loop, so /health and streams keep going."""
    raw = await request.read()
    if len(raw) > THREAD_PARSE_BYTES:
        return await asyncio.to_thread(parse_json_body, raw)
    return parse_json_body(raw)


def _error_middleware() -> web.middleware:
    @web.middleware
    async def errors(request: web.Request, handler):  # noqa: ANN001, ANN202
        try:
            response = await handler(request)
        except Exception as exc:  # the one place exceptions become HTTP statuses
            response = error_response(exc)
        route = request.match_info.route.resource
        label = route.canonical if route is not None else "unmatched"
        metrics.HTTP_REQUESTS.labels(label, str(response.status)).inc()
        return response

    return errors


def _header_bytes(request: web.Request, name: str) -> bytes:
    try:
        return request.headers.get(name, "").encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # not from the wire's bytes: cannot match the key either
        return b""


def _auth_middleware(api_key: str) -> web.middleware:
    """Every ``/v1`` route needs ``Authorization: Bearer <key>``; /health and /metrics do not.

    Header bytes that are not UTF-8 arrive as surrogate escapes; they are compared as the
    bytes they were, so any header at all is a 401 rather than an encoding error.
    """
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def auth(request: web.Request, handler):  # noqa: ANN001, ANN202
        if request.path.startswith("/v1") and request.method != "OPTIONS":
            if not hmac.compare_digest(_header_bytes(request, "Authorization"), expected):
                raise HTTPError(
                    HTTPStatus.UNAUTHORIZED,
                    "Unauthorized: send the server's API key as 'Authorization: Bearer <key>'",
                )
        return await handler(request)

    return auth


def build_app(engine: AsyncLLMEngine, config: ServerConfig) -> web.Application:
    """The OpenAI-compatible routes over ``engine``; load/unload only with runtime updating."""
    middlewares = [_error_middleware()]
    if config.api_key:
        middlewares.append(_auth_middleware(config.api_key))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    models = ServingModels(engine, config.allow_runtime_lora_updating, config.served_model_aliases)
    completion = ServingCompletion(engine, models, config.limits)
    chat = ServingChat(engine, models, config.limits)
    app[MODELS_KEY] = models

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": loraserve.__version__})

    async def list_models(_: web.Request) -> web.Response:
        return web.json_response(models.list_models())

    async def completions(request: web.Request) -> web.StreamResponse:
        return await completion.create(request, await _json_body(request))

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await chat.create(request, await _json_body(request))

    async def load_lora(request: web.Request) -> web.Response:
        body = LoadLoRAAdapterRequest.parse(await _json_body(request))
        return web.Response(text=await models.load(body))

    async def unload_lora(request: web.Request) -> web.Response:
        body = UnloadLoRAAdapterRequest.parse(await _json_body(request))
        return web.Response(text=await models.unload(body))

    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/version", version)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    if config.allow_runtime_lora_updating:
        app.router.add_post("/v1/load_lora_adapter", load_lora)
        app.router.add_post("/v1/unload_lora_adapter", unload_lora)
    return app


async def start_server(engine: AsyncLLMEngine, config: ServerConfig) -> web.AppRunner:
    """Load ``--lora-modules`` (raising on the first bad one), then listen.

    ``handler_cancellation`` makes a client disconnect cancel its handler, which closes the
    engine stream and frees the sequence even for non-streaming requests.
    """
    app = build_app(engine, config)
    await app[MODELS_KEY].load_static(config.lora_modules)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful with ``port=0`` in tests)."""
    return runner.addresses[0][1]
