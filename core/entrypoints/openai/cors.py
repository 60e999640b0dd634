"""CORS for browser clients, as vLLM's (Starlette's ``CORSMiddleware``) with the same flags and
defaults: any origin, method and header, no credentials.

A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here, for any
path, before routing: 200 when origin, method and headers are allowed, else 400 naming what
was refused. Other responses to a request with an ``Origin`` get the allow headers as they
are prepared, streams included.
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import hdrs, web

from loraserve.entrypoints.openai.errors import HTTPError, error_response
from loraserve.entrypoints.openai.server_config import CORSConfig

ALL_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")  # what "*" allows
SAFELISTED_HEADERS = {"accept", "accept-language", "content-language", "content-type"}
MAX_AGE = "600"  # seconds a browser may cache a preflight answer (Starlette's)


class CORSPolicy:
    def __init__(self, config: CORSConfig) -> None:
        self.any_origin = "*" in config.allowed_origins
        self.origins = set(config.allowed_origins)
        self.methods = ALL_METHODS if "*" in config.allowed_methods else tuple(config.allowed_methods)
        self.any_header = "*" in config.allowed_headers
        self.headers = SAFELISTED_HEADERS | {h.lower() for h in config.allowed_headers}
        self.credentials = config.allow_credentials
        # with credentials a browser refuses "*": the origin itself is sent back
        self.echo_origin = not self.any_origin or self.credentials

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get(hdrs.ORIGIN, "")
        requested = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
        headers = {hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(self.methods),
                   hdrs.ACCESS_CONTROL_MAX_AGE: MAX_AGE}
        headers.update(self.origin_headers(origin))
        if self.any_header and requested:
            headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = requested
        elif not self.any_header:
            headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ", ".join(sorted(self.headers))
        refused = []
        if not self.allows(origin):
            refused.append(f"origin {origin!r}")
        if request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD] not in self.methods:
            refused.append(f"method {request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD]!r}")
        if not self.any_header and (names := [h.strip().lower() for h in requested.split(",")
                                              if h.strip()]):
            if bad := [h for h in names if h not in self.headers]:
                refused.append(f"headers {', '.join(bad)!r}")
        if refused:
            answer = error_response(HTTPError(HTTPStatus.BAD_REQUEST,
                                              f"Disallowed CORS {'; '.join(refused)}"))
            return web.Response(status=answer.status, headers=answer.headers, body=answer.body)
        return web.Response(status=200, text="OK", headers=headers)

    def origin_headers(self, origin: str) -> dict[str, str]:
        if not self.allows(origin):
            return {}
        headers = {hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin if self.echo_origin else "*"}
        if self.echo_origin:
            headers[hdrs.VARY] = "Origin"
        if self.credentials:
            headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
        return headers


def is_preflight(request: web.Request) -> bool:
    return request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers


def cors_middleware(policy: CORSPolicy) -> web.middleware:
    @web.middleware
    async def cors(request: web.Request, handler):  # noqa: ANN001, ANN202
        if is_preflight(request):
            return policy.preflight(request)
        return await handler(request)

    return cors


def cors_on_prepare(policy: CORSPolicy):  # noqa: ANN201 - an on_response_prepare signal handler
    """Adds the allow headers to every answer to a cross-origin request, before it is sent."""

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not is_preflight(request):
            for name, value in policy.origin_headers(origin).items():
                if name == hdrs.VARY and hdrs.VARY in response.headers:
                    value = f"{response.headers[hdrs.VARY]}, {value}"
                response.headers[name] = value

    return add_headers
