"""The aiohttp application: the serving core's routes over HTTP, the API-key check and the
error middleware.

Each route only reads the body, hands it to ``OpenAIServing.handle`` and writes what comes
back; ``start_server`` loads ``--lora-modules``, binds the socket and returns a runner the
caller cleans up.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from multidict import CIMultiDict
from prometheus_client.aiohttp import make_aiohttp_handler

from loraserve import metrics
from loraserve.entrypoints.openai.auth import check_key, needs_key
from loraserve.entrypoints.openai.cors import CORSPolicy, cors_middleware, cors_on_prepare
from loraserve.entrypoints.openai.errors import HTTPError, error_response
from loraserve.entrypoints.openai.request_values import parse_json_body
from loraserve.entrypoints.openai.responses import ServingResponse
from loraserve.entrypoints.openai.routes import Route
from loraserve.entrypoints.openai.server_config import ServerConfig
from loraserve.entrypoints.openai.serving import OpenAIServing

if TYPE_CHECKING:
    from loraserve.engine.async_engine import AsyncLLMEngine

MAX_BODY_BYTES = 64 * 1024 * 1024  # long token-id prompts are legitimately large
THREAD_PARSE_BYTES = 1024 * 1024  # larger bodies are decoded on a worker thread
SERVING_KEY = web.AppKey("serving", OpenAIServing)
MODEL_KEY = web.RequestKey("model", str)  # the model a request named, for its log line
HTTP_LOG_LEVELS = {"critical": logging.CRITICAL, "error": logging.ERROR, "warning": logging.WARNING,
                   "info": logging.INFO, "debug": logging.DEBUG, "trace": 5}  # uvicorn's TRACE


async def _json_body(request: web.Request) -> object:
    """The decoded body (None for none: the core refuses that where a body is needed); a large
    one off the event loop, so /health and streams keep going."""
    raw = await request.read()
    if not raw.strip():
        return None
    if len(raw) > THREAD_PARSE_BYTES:
        return await asyncio.to_thread(parse_json_body, raw)
    return parse_json_body(raw)


class AccessLogger(AbstractAccessLogger):
    """One line per request, after its last byte: client, request line, status, latency and
    the model it named (``-`` for none), at INFO on ``aiohttp.access``."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        version = f"{request.version.major}.{request.version.minor}"
        self.logger.info(
            '%s - "%s %s HTTP/%s" %d %.3fs model=%s', request.remote or "-", request.method,
            request.path_qs, version, response.status, time, _loggable(request.get(MODEL_KEY)),
        )


def _loggable(model: str | None, limit: int = 128) -> str:
    """A client's model name as one safe token of a log line: escaped (no forged lines),
    bounded (no megabyte lines), ``-`` for none."""
    if not model:
        return "-"
    text = model if model.isprintable() and " " not in model else ascii(model)
    return text if len(text) <= limit else text[:limit] + "..."


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


def _auth_middleware(api_key: str, root_path: str) -> web.middleware:
    """``auth``'s rule, under ``--root-path`` too. Header bytes that are not UTF-8 arrive as
    surrogate escapes and are compared as the bytes they were."""

    @web.middleware
    async def auth(request: web.Request, handler):  # noqa: ANN001, ANN202
        if needs_key(core_path(request.path, root_path), request.method):
            check_key(_header_bytes(request, "Authorization"), api_key)
        return await handler(request)

    return auth


def build_app(engine: AsyncLLMEngine, config: ServerConfig) -> web.Application:
    """The serving core's routes over HTTP (also under ``--root-path``), with the CORS, error
    (and, given a key, auth) middleware."""
    cors = CORSPolicy(config.cors)
    middlewares = [cors_middleware(cors), _error_middleware()]
    if config.api_key:
        middlewares.append(_auth_middleware(config.api_key, config.root_path))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app.on_response_prepare.append(cors_on_prepare(cors))
    serving = OpenAIServing(engine, config)
    app[SERVING_KEY] = serving
    for route in serving.routes:
        handler = _route(serving, route.method, route.path, config.root_path)
        for prefix in dict.fromkeys(["", config.root_path]):
            app.router.add_route(route.method, prefix + _aiohttp_path(route), handler)
    return app


def _aiohttp_path(route: Route) -> str:
    """The route in aiohttp's syntax: a final ``{name}`` takes the rest of the path."""
    name = route.parameter
    return route.path if name is None else f"{route.prefix}{{{name}:.+}}"


def core_path(path: str, root_path: str) -> str:
    """A request's path as the core's routes spell it, without the proxy's prefix."""
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        return path[len(root_path):] or "/"
    return path


def _route(serving: OpenAIServing, method: str, path: str, root_path: str = ""):  # noqa: ANN202
    """An aiohttp handler for one route; the core matches the request's own path."""
    if (method, path) == ("GET", "/metrics"):
        return _metrics_handler()

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request) if method == "POST" else None
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            request[MODEL_KEY] = body["model"]  # for the access log line
        answer = await serving.handle(method, core_path(request.path, root_path), body)
        return await _write(request, answer)

    return handler


def _metrics_handler():  # noqa: ANN202 - an aiohttp handler
    """prometheus_client's aiohttp handler over the registry the core's /metrics exports, for
    what the core has no headers for: gzip (Accept-Encoding) and OpenMetrics (Accept), the
    latter with the escaping that ``metrics.openmetrics_accept`` explains."""
    serve = make_aiohttp_handler(metrics.REGISTRY)

    async def handler(request: web.Request) -> web.Response:
        headers = CIMultiDict(request.headers)
        headers[hdrs.ACCEPT] = metrics.openmetrics_accept(",".join(headers.getall(hdrs.ACCEPT, [])))
        return await serve(request.clone(headers=headers))

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
    # --uvicorn-log-level: the level of aiohttp's loggers, whose access log says one line
    # per request at info (AccessLogger), unless --disable-uvicorn-access-log
    logging.getLogger("aiohttp").setLevel(HTTP_LOG_LEVELS[config.http_log_level])
    access = logging.getLogger("aiohttp.access") if config.access_log else None
    runner = web.AppRunner(app, handler_cancellation=True, access_log=access,
                           access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful with ``port=0`` in tests)."""
    return runner.addresses[0][1]
