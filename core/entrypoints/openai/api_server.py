"""The aiohttp application: the serving core's routes over HTTP, the API-key check and the
error middleware.

Each route only reads the body, hands it to ``OpenAIServing.handle`` and writes what comes
back; ``start_server`` loads ``--lora-modules``, binds the socket and returns a runner the
caller cleans up.
"""

from __future__ import annotations

import asyncio
import hmac
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import web

from loraserve import metrics
from loraserve.entrypoints.openai.errors import HTTPError, error_response
from loraserve.entrypoints.openai.request_values import parse_json_body
from loraserve.entrypoints.openai.responses import ServingResponse
from loraserve.entrypoints.openai.server_config import ServerConfig
from loraserve.entrypoints.openai.serving import OpenAIServing

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine

MAX_BODY_BYTES = 64 * 1024 * 1024  # long token-id prompts are legitimately large
THREAD_PARSE_BYTES = 1024 * 1024  # larger bodies are decoded on a worker thread
SERVING_KEY = web.AppKey("serving", OpenAIServing)


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
        except web.HTTPException as exc:  # the router's 404/405, a body over the limit
            message = "Not Found" if exc.status == HTTPStatus.NOT_FOUND else exc.reason
            response = _web_response(error_response(HTTPError(HTTPStatus(exc.status), message)))
        except Exception as exc:  # auth, an unreadable body; the core maps its own errors
            response = _web_response(error_response(exc))
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
    """The serving core's routes over HTTP, with the error (and, given a key, auth) middleware."""
    middlewares = [_error_middleware()]
    if config.api_key:
        middlewares.append(_auth_middleware(config.api_key))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    serving = OpenAIServing(engine, config)
    app[SERVING_KEY] = serving
    for method, path in serving.routes:
        app.router.add_route(method, path, _route(serving, method, path))
    return app


def _route(serving: OpenAIServing, method: str, path: str):  # noqa: ANN202 - an aiohttp handler
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request) if method == "POST" else None
        return await _write(request, await serving.handle(method, path, body))

    return handler


def _web_response(response: ServingResponse) -> web.Response:
    return web.Response(status=response.status, headers=response.headers,
                        body=response.body or None)


async def _write(request: web.Request, response: ServingResponse) -> web.StreamResponse:
    """Send the core's answer; a stream is closed however it ends (a client gone aborts it)."""
    if response.stream is None:
        return _web_response(response)
    out = web.StreamResponse(status=response.status, headers=response.headers)
    try:
        await out.prepare(request)
        async for data in response.stream:
            await out.write(data)
        await out.write_eof()
    finally:
        await response.stream.aclose()
    return out


async def start_server(engine: AsyncLLMEngine, config: ServerConfig) -> web.AppRunner:
    """Load ``--lora-modules`` (raising on the first bad one), then listen.

    ``handler_cancellation`` makes a client disconnect cancel its handler, which closes the
    engine stream and frees the sequence even for non-streaming requests.
    """
    app = build_app(engine, config)
    await app[SERVING_KEY].models.load_static(config.lora_modules)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful with ``port=0`` in tests)."""
    return runner.addresses[0][1]
