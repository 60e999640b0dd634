"""Plugin ``lora_hf_hub_resolver``: adapter ``owner/repo[/subpath]`` is that folder of that
Hub repository, as in vLLM, if ``VLLM_LORA_RESOLVER_HF_REPO_LIST`` allows the repo.

The allowlist holds repo ids (``owner/repo``) or whole owners (``owner``); unset or empty
allows nothing. Files go to huggingface_hub's own cache (``HF_HUB_CACHE``/``HF_HOME``), so
adapters fetched earlier with Hub tools are reused; only ``adapter_config.json`` and
``adapter_model.safetensors`` are downloaded, and the shared download cache validates them
before they are handed out. ``HF_TOKEN`` and ``HF_ENDPOINT`` work as usual.
huggingface_hub is imported only when the first adapter is looked up.
"""

from __future__ import annotations

import logging

from loraserve.resolution import (
    DownloadCache,
    RemoteResolver,
    hookimpl,
    is_safe_name,
    register_if_configured,
)
from loraserve_hf_hub_resolver.source import HubSource

logger = logging.getLogger(__name__)

REPO_LIST_ENV = "VLLM_LORA_RESOLVER_HF_REPO_LIST"
RESOLVER_NAME = "lora_hf_hub_resolver"


class RepoAllowlist:
    """Repo ids and owners that may be loaded; compared case-insensitively, like the Hub."""

    def __init__(self, entries: str | list[str] | None) -> None:
        if isinstance(entries, str):
            entries = entries.split(",")
        cleaned = [e.strip().strip("/").lower() for e in entries or [] if e.strip().strip("/")]
        self.repos = {e for e in cleaned if "/" in e}
        self.owners = {e for e in cleaned if "/" not in e}

    def __bool__(self) -> bool:
        return bool(self.repos or self.owners)

    def allows(self, repo_id: str) -> bool:
        repo_id = repo_id.lower()
        return repo_id in self.repos or repo_id.split("/")[0] in self.owners


def split_adapter_name(lora_name: str) -> tuple[str, str] | None:
    """``owner/repo[/subpath]`` -> (repo id, subpath); ``None`` for anything else."""
    if not is_safe_name(lora_name.rstrip("/")):
        return None
    parts = lora_name.rstrip("/").split("/")
    if len(parts) < 2:
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


class HfHubResolver(RemoteResolver):
    """Resolves ``owner/repo[/subpath]`` names of allow-listed repos through the cache."""

    def __init__(self, repo_list: str | list[str] | None, cache: DownloadCache | None = None):
        super().__init__(cache)
        self.allowlist = RepoAllowlist(repo_list)
        if self.allowlist:
            logger.warning(
                "%s may download LoRA adapters from these Hugging Face repos/owners: %s",
                RESOLVER_NAME,
                sorted(self.allowlist.repos | self.allowlist.owners),
            )

    async def source_for(self, base_model_name: str, lora_name: str) -> HubSource | None:
        parsed = split_adapter_name(lora_name)
        if parsed is None or not self.allowlist.allows(parsed[0]):
            return None
        repo_id, subpath = parsed
        return HubSource(repo_id, subpath, self.cache.config.timeout_s)


@hookimpl
def register_lora_resolvers(register) -> None:
    """Register the resolver when the allowlist names at least one repo or owner."""
    register_if_configured(register, RESOLVER_NAME, REPO_LIST_ENV, HfHubResolver)
