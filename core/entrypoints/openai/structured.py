"""A request's constraint on its text, from whichever field spells it: OpenAI's
``response_format``, vLLM's ``structured_outputs`` or its older ``guided_*`` fields. At most
one may be given; each mistake is a 400 naming the field."""

from __future__ import annotations

from typing import Any

from loraserve.entrypoints.openai.request_values import show
from loraserve.errors import InvalidRequestError
from loraserve.sampling_params import StructuredOutputsParams

# structured_outputs' keys (vLLM's); the last ones are accepted only with their no-op value
_KEYS = {"json", "regex", "choice", "grammar", "json_object", "disable_any_whitespace"}
_NO_OP = {"disable_fallback": False, "disable_additional_properties": False,
          "whitespace_pattern": None, "structural_tag": None}
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
           "guided_grammar": "grammar"}


def structured_outputs(body: Any) -> StructuredOutputsParams | None:
    """The request's constraint (``body`` is a parsed SamplingBody), or None."""
    given = {}
    if (spec := _response_format(body.response_format)) is not None:
        given["response_format"] = spec
    if body.structured_outputs is not None:
        given["structured_outputs"] = _vllm_fields(body.structured_outputs, "structured_outputs")
    if guided := [name for name in _GUIDED if getattr(body, name) is not None]:
        given[guided[0]] = _vllm_fields({_GUIDED[n]: getattr(body, n) for n in guided}, guided[0])
    if len(given) > 1:
        names = ", ".join(f"'{name}'" for name in given)
        raise InvalidRequestError(f"Only one structured-output constraint may be given, got {names}",
                                  param=next(iter(given)))
    return next(iter(given.values()), None)


def _response_format(value: dict[str, Any] | None) -> StructuredOutputsParams | None:
    if value is None:
        return None
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _params({"json_object": True}, "response_format")
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequestError("'response_format.json_schema.schema' must be a JSON schema "
                                      f"object, got {show(schema)}", param="response_format")
        return _params({"json": schema}, "response_format")
    raise InvalidRequestError("'response_format.type' must be 'text', 'json_object' or "
                              f"'json_schema', got {show(kind)}", param="response_format")


def _vllm_fields(value: dict[str, Any], field: str) -> StructuredOutputsParams:
    for key, item in value.items():
        if key not in _KEYS and not (key in _NO_OP and item == _NO_OP[key]):
            raise InvalidRequestError(f"'{field}.{key}' is not supported" if key in _NO_OP else
                                      f"'{field}' has no key {show(key)} (keys: "
                                      f"{', '.join(sorted(_KEYS))})", param=field)
    return _params({k: v for k, v in value.items() if k in _KEYS}, field)


def _params(fields: dict[str, Any], field: str) -> StructuredOutputsParams:
    kinds = {"json": (str, dict, bool), "regex": str, "grammar": str, "choice": list,
             "json_object": bool, "disable_any_whitespace": bool}
    for key, item in fields.items():
        if item is not None and not isinstance(item, kinds[key]):
            raise InvalidRequestError(f"'{field}': '{key}' has the wrong type, got {show(item)}",
                                      param=field)
    try:
        return StructuredOutputsParams(**fields)
    except InvalidRequestError as exc:
        raise InvalidRequestError(f"'{field}': {exc}", param=field) from None
