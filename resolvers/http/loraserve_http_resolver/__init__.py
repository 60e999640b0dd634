"""Plugin ``lora_http_resolver``: adapter ``foo`` is at ``$VLLM_LORA_RESOLVER_HTTP_URL`` with
``{base_model_name}`` and ``{lora_name}`` filled in (each path segment URL-quoted).

The URL is a directory holding ``adapter_config.json`` and ``adapter_model.safetensors``
(fetched by name), or one ``.tar``/``.tar.gz``/``.tgz``/``.zip`` archive.
``VLLM_LORA_RESOLVER_HTTP_TOKEN`` is sent as a bearer token (aiohttp drops it on redirects
to another host). aiohttp's client is imported only when the first adapter is looked up.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import quote, urlsplit

from loraserve.resolution import (
    DownloadCache,
    PluginError,
    RemoteResolver,
    fill_location_template,
    hookimpl,
    register_if_configured,
)
from loraserve_http_resolver.source import CHUNK, TOKEN_ENV, HttpSource

__all__ = ["CHUNK", "HttpResolver", "HttpSource", "register_lora_resolvers"]

logger = logging.getLogger(__name__)

URL_ENV = "VLLM_LORA_RESOLVER_HTTP_URL"
RESOLVER_NAME = "lora_http_resolver"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class HttpResolver(RemoteResolver):
    """Resolves adapter names to URLs through the shared download cache."""

    def __init__(
        self, url_template: str, token: str | None = None, cache: DownloadCache | None = None
    ) -> None:
        scheme = urlsplit(url_template).scheme
        if scheme not in ("http", "https") or "{lora_name}" not in url_template:
            raise PluginError(
                f"{URL_ENV}={url_template!r} must be an http(s) URL containing {{lora_name}}, "
                "e.g. https://example.com/adapters/{base_model_name}/{lora_name}.tar.gz"
            )
        super().__init__(cache)
        self.url_template = url_template
        self.token = token

    async def source_for(self, base_model_name: str, lora_name: str) -> HttpSource | None:
        url = fill_location_template(
            self.url_template,
            base_model_name=base_model_name,
            lora_name=lora_name,
            quote=lambda segment: quote(segment, safe=""),
        )
        if url is None:
            logger.info("%s: refused adapter name %r", RESOLVER_NAME, lora_name)
            return None
        return HttpSource(url, self.token, self.cache.config.timeout_s)


def _from_env(template: str) -> HttpResolver:
    token = os.environ.get(TOKEN_ENV) or None
    host = urlsplit(template).hostname or ""
    if token and template.startswith("http://") and host not in LOOPBACK:
        logger.warning("%s is sent in clear text to %s; use https", TOKEN_ENV, host)
    return HttpResolver(template, token)


@hookimpl
def register_lora_resolvers(register) -> None:
    """Register the resolver when ``VLLM_LORA_RESOLVER_HTTP_URL`` is set."""
    register_if_configured(register, RESOLVER_NAME, URL_ENV, _from_env)
