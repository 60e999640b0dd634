"""``/openapi.json`` (OpenAPI 3.1) from the route table and the request models' JSON schemas,
and ``/docs``: a static HTML page written from the same document, so it works offline (no
script or stylesheet is loaded from elsewhere)."""

from __future__ import annotations

import html
from typing import Any

from pydantic.json_schema import models_json_schema

from loraserve.entrypoints.openai.routes import RouteTable
from loraserve.version import __version__

_REF = "#/components/schemas/{model}"
_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "code"],
                             "properties": {"message": {"type": "string"},
                                            "type": {"type": "string"},
                                            "param": {"type": ["string", "null"]},
                                            "code": {"type": "integer"}}}},
}


def openapi_document(routes: RouteTable, title: str) -> dict[str, Any]:
    """Every route of ``routes``; a route with request models gets them as its body."""
    models = sorted({m for route in routes for m in route.body}, key=lambda m: m.__name__)
    refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
    schemas = {**defs.get("$defs", {}), "ErrorResponse": _ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary or f"{route.method} {route.path}",
            "operationId": f"{route.method.lower()}_{_slug(route.path)}",
            "responses": {
                "200": {"description": "Success"},
                "default": {"description": "An OpenAI-shaped error",
                            "content": {"application/json": {
                                "schema": {"$ref": _REF.format(model="ErrorResponse")}}}},
            },
        }
        if route.parameter:
            operation["parameters"] = [{"name": route.parameter, "in": "path", "required": True,
                                        "schema": {"type": "string"}}]
        if route.body:
            shapes = [refs[(m, "validation")] for m in route.body]
            schema = shapes[0] if len(shapes) == 1 else {"oneOf": shapes}
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": schema}}}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {"openapi": "3.1.0", "info": {"title": title, "version": __version__},
            "paths": paths, "components": {"schemas": schemas}}


def _slug(path: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in path).strip("_") or "root"


def docs_page(document: dict[str, Any]) -> str:
    """A static page: each route, then each request body's fields with type and notes."""
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(document['info']['title'])}"
           " API</title><style>body{font-family:sans-serif;max-width:60em;margin:auto}"
           "td,th{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left}</style></head>"
           f"<body><h1>{e(document['info']['title'])} API</h1>"
           "<p>The machine-readable document is <a href='openapi.json'>/openapi.json</a>.</p>"
           "<h2>Routes</h2><table><tr><th>method</th><th>path</th><th>body</th></tr>"]
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            names = [r["$ref"].rsplit("/", 1)[1] for r in _refs(body.get("schema", {}))]
            links = ", ".join(f"<a href='#{e(n)}'>{e(n)}</a>" for n in names)
            out.append(f"<tr><td>{method.upper()}</td><td><code>{e(path)}</code></td>"
                       f"<td>{links}</td></tr>")
    out.append("</table><h2>Request bodies</h2>")
    for name, schema in document["components"]["schemas"].items():
        out.append(f"<h3 id='{e(name)}'>{e(name)}</h3><table><tr><th>field</th><th>type</th>"
                   "<th>notes</th></tr>")
        required = set(schema.get("required", ()))
        for field, spec in schema.get("properties", {}).items():
            note = spec.get("description", "") + (" (required)" if field in required else "")
            out.append(f"<tr><td><code>{e(field)}</code></td><td>{e(_type(spec))}</td>"
                       f"<td>{e(note)}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "".join(out)


def _refs(schema: dict[str, Any]) -> list[dict[str, str]]:
    return [schema] if "$ref" in schema else schema.get("oneOf", [])


def _type(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        return spec["$ref"].rsplit("/", 1)[1]
    if "anyOf" in spec:
        return " | ".join(_type(s) for s in spec["anyOf"])
    if spec.get("type") == "array":
        return f"array of {_type(spec.get('items', {}))}"
    return str(spec.get("type", "any"))
