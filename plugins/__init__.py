"""loraserve's plugin system: hook specifications, entry-point discovery and the manager.

A plugin is a module listed under entry-point group ``loraserve.plugins`` that implements
hooks from ``loraserve.plugins.hookspecs`` with ``@hookimpl``. See docs/plugins.md.
"""

from __future__ import annotations

from loraserve.plugins.discovery import (
    ENTRY_POINT_GROUP,
    EXPLICIT_ONLY_GROUP,
    PLUGINS_ENV,
    InstalledPlugin,
)
from loraserve.plugins.hookspecs import hookimpl, hookspec
from loraserve.plugins.manager import (
    PluginInfo,
    PluginManager,
    get_plugin_manager,
    list_plugins,
    reset_plugin_manager,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "EXPLICIT_ONLY_GROUP",
    "PLUGINS_ENV",
    "InstalledPlugin",
    "PluginInfo",
    "PluginManager",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "list_plugins",
    "reset_plugin_manager",
]
