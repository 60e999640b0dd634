"""The one rule for which adapter names a resolver may look up, and where they lead.

The adapter name comes from a client's ``model`` field, so it must not be able to walk out
of the configured folder or prefix: every ``/``-separated segment starts with a letter or
digit and holds only ``A-Z a-z 0-9 . _ -`` (so no ``..``, no empty segment, no ``?`` or
``%``). Every resolver (local folder, S3, HTTP, Hub) asks this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_NAME_CHARS = 256


def is_safe_name(name: str) -> bool:
    """True when every segment of ``name`` is a plain file name (see module docstring)."""
    if not name or len(name) > MAX_NAME_CHARS:
        return False
    return all(_SEGMENT.match(part) for part in name.split("/"))


def is_plain_name(name: str) -> bool:
    """A safe name of one segment: a folder directly inside the resolver's directory."""
    return "/" not in name and is_safe_name(name)


def fill_location_template(
    template: str,
    *,
    base_model_name: str,
    lora_name: str,
    quote: Callable[[str], str] = lambda segment: segment,
) -> str | None:
    """Substitute ``{base_model_name}`` and ``{lora_name}``; ``None`` if a name is unsafe.

    ``quote`` encodes one path segment (URL templates pass ``urllib.parse.quote``). A base
    model served by path (``/models/x``) loses its leading slash; ``.``/``..`` are refused.
    """
    if not is_safe_name(lora_name):
        return None
    base_parts = [part for part in base_model_name.split("/") if part]
    if not base_parts or any(part in (".", "..") for part in base_parts):
        return None
    base = "/".join(quote(part) for part in base_parts)
    lora = "/".join(quote(part) for part in lora_name.split("/"))
    return template.replace("{base_model_name}", base).replace("{lora_name}", lora)
