"""Which plugins are installed and which are enabled, read from metadata alone (nothing imported).

A plugin is an entry point in group ``loraserve.plugins``; its name is the plugin's name.
A plugin that fetches adapters from another machine also lists its name in group
``loraserve.plugins.explicit``, so installing it never enables it: only naming it in
``VLLM_PLUGINS`` does.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from loraserve.errors import PluginError

ENTRY_POINT_GROUP = "loraserve.plugins"
EXPLICIT_ONLY_GROUP = "loraserve.plugins.explicit"
PLUGINS_ENV = "VLLM_PLUGINS"


@dataclass(frozen=True)
class InstalledPlugin:
    """One entry point, as metadata describes it."""

    name: str
    entry_point: EntryPoint
    distribution: str | None
    version: str | None
    explicit_only: bool


def parse_plugin_selection(value: str | None) -> list[str] | None:
    """``VLLM_PLUGINS`` as a list: None when unset (all), [] when empty (none), else the names."""
    if value is None:
        return None
    names: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if item and item not in names:
            names.append(item)
    return names


def selection_from_env() -> list[str] | None:
    """The plugin selection the ``VLLM_PLUGINS`` environment variable asks for."""
    return parse_plugin_selection(os.environ.get(PLUGINS_ENV))


def discover_plugins() -> dict[str, InstalledPlugin]:
    """Every installed plugin by name; two distributions claiming one name is a PluginError."""
    importlib.invalidate_caches()
    explicit_only = {ep.name for ep in entry_points(group=EXPLICIT_ONLY_GROUP)}
    found: dict[str, InstalledPlugin] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        plugin = InstalledPlugin(
            name=ep.name,
            entry_point=ep,
            distribution=dist.metadata["Name"] if dist is not None else None,
            version=dist.version if dist is not None else None,
            explicit_only=ep.name in explicit_only,
        )
        if ep.name in found and found[ep.name].entry_point.value != ep.value:
            raise PluginError(
                f"Plugin name '{ep.name}' is provided by two distributions "
                f"({found[ep.name].distribution} and {plugin.distribution}); "
                "uninstall one of them."
            )
        found.setdefault(ep.name, plugin)
    return found


def enabled_plugins(
    installed: dict[str, InstalledPlugin], selection: list[str] | None
) -> list[str]:
    """The plugins to use, in resolver order: the selection's order, else sorted by name.

    Unset selection: every installed plugin except the explicit-only ones. A selected name
    that is not installed is skipped, as vLLM does (``missing_plugins`` names them).
    """
    if selection is None:
        return sorted(name for name, p in installed.items() if not p.explicit_only)
    return [name for name in selection if name in installed]


def missing_plugins(installed: dict[str, InstalledPlugin], selection: list[str] | None) -> list[str]:
    """The selected names that no installed distribution provides."""
    return [name for name in selection or () if name not in installed]
