"""The serving core's route table: (method, path) to a handler, path parameters included.

A route's path may end in one ``{name}`` parameter, which takes the rest of the path, slashes
included (a model id such as ``org/model`` is one parameter); the handler gets it as a
keyword argument: ``await handler(body, name=...)``. Any front end can match a request's
method and path here; the aiohttp app registers the same paths with aiohttp's router.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loraserve.entrypoints.openai.responses import ServingResponse

if TYPE_CHECKING:
    from pydantic import BaseModel

Handler = Callable[..., Awaitable[ServingResponse]]  # handler(body, **path_parameters)

_PARAMETER = re.compile(r"\{([a-z_]+)\}$")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # "/v1/models", or "/v1/models/{model_id}"
    handler: Handler
    body: tuple[type[BaseModel], ...] = ()  # the request models its body may be (for OpenAPI)
    summary: str = ""

    @property
    def parameter(self) -> str | None:
        match = _PARAMETER.search(self.path)
        return match[1] if match else None

    @property
    def prefix(self) -> str:
        """The fixed part of the path, before its parameter."""
        return _PARAMETER.sub("", self.path)


class RouteTable:
    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(self, method: str, path: str, handler: Handler,
            body: tuple[type[BaseModel], ...] = (), summary: str = "") -> None:
        if "{" in _PARAMETER.sub("", path):
            raise ValueError(f"{path!r}: only a final {{name}} parameter is supported")
        self._routes.append(Route(method, path, handler, body, summary))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, Any]] | None:
        """The handler for this request and its path parameters; None if no route has it."""
        for route in self._routes:
            if route.method != method:
                continue
            name = route.parameter
            if name is None and route.path == path:
                return route.handler, {}
            if name is not None and path.startswith(route.prefix) and len(path) > len(route.prefix):
                return route.handler, {name: path[len(route.prefix):]}
        return None

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)
