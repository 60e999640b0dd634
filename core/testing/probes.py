"""Probes into plugins and download sources: what a plugin registers for a hook, and how
many bytes a source's fetch left on disk."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest


def registered_hook_functions(plugin: object, hook: str) -> set:
    """The functions pluggy registers for ``hook`` when ``plugin`` (a module) is a plugin."""
    import pluggy

    from loraserve.plugins import hookspecs

    manager = pluggy.PluginManager("loraserve")
    manager.add_hookspecs(hookspecs)
    manager.register(plugin)
    return {impl.function for impl in getattr(manager.hook, hook).get_hookimpls()}


def record_written_sizes(monkeypatch: pytest.MonkeyPatch, source_class: type) -> dict[str, int]:
    """Patch ``source_class.fetch`` to record the most bytes any fetch of each file left on
    disk, however it ended (for tests that a source stops at the listed size)."""
    sizes: dict[str, int] = {}
    fetch = source_class.fetch

    async def measured(self, file, dest, progress):  # noqa: ANN001, ANN202
        try:
            await fetch(self, file, dest, progress)
        finally:
            size = dest.stat().st_size if dest.exists() else 0
            sizes[file.name] = max(sizes.get(file.name, 0), size)

    monkeypatch.setattr(source_class, "fetch", measured)
    return sizes
