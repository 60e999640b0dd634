"""Plugin ``lora_s3_resolver``: adapter ``foo`` is the prefix ``$VLLM_LORA_RESOLVER_S3_URI``
with ``{base_model_name}`` and ``{lora_name}`` filled in.

The prefix holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or the template
ends in ``.tar``/``.tar.gz``/``.tgz``/``.zip`` and names one archive). Credentials, region and
endpoint come from the usual AWS variables and profiles (``AWS_ENDPOINT_URL`` for MinIO and
friends). s3fs is imported only when the first adapter is looked up.
"""

from __future__ import annotations

import asyncio
import logging

from loraserve.resolution import (
    AdapterDownloadError,
    DownloadCache,
    PluginError,
    RemoteResolver,
    fill_location_template,
    hookimpl,
    register_if_configured,
)
from loraserve_s3_resolver.source import CHUNK, S3Source, s3_filesystem

__all__ = ["CHUNK", "S3Resolver", "S3Source", "register_lora_resolvers"]

logger = logging.getLogger(__name__)

URI_ENV = "VLLM_LORA_RESOLVER_S3_URI"
RESOLVER_NAME = "lora_s3_resolver"


class S3Resolver(RemoteResolver):
    """Resolves adapter names to S3 prefixes through the shared download cache."""

    def __init__(self, uri_template: str, cache: DownloadCache | None = None) -> None:
        if not uri_template.startswith("s3://") or "{lora_name}" not in uri_template:
            raise PluginError(
                f"{URI_ENV}={uri_template!r} must start with s3:// and contain {{lora_name}}, "
                "e.g. s3://bucket/adapters/{base_model_name}/{lora_name}"
            )
        super().__init__(cache)
        self.uri_template = uri_template

    async def source_for(self, base_model_name: str, lora_name: str) -> S3Source | None:
        uri = fill_location_template(
            self.uri_template, base_model_name=base_model_name, lora_name=lora_name
        )
        if uri is None:
            logger.info("%s: refused adapter name %r", RESOLVER_NAME, lora_name)
            return None
        timeout_s = self.cache.config.timeout_s
        try:  # made before the listing's deadline starts: local work, once per process
            await asyncio.to_thread(s3_filesystem, timeout_s)
        except Exception as exc:
            raise AdapterDownloadError(lora_name, uri, f"no S3 client: {exc}") from exc
        return S3Source(uri, timeout_s)


@hookimpl
def register_lora_resolvers(register) -> None:
    """Register the resolver when ``VLLM_LORA_RESOLVER_S3_URI`` is set."""
    register_if_configured(register, RESOLVER_NAME, URI_ENV, S3Resolver)
