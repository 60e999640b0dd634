"""Fake plugin distributions: a module plus a real ``.dist-info`` on sys.path, as pip leaves them."""

from __future__ import annotations

import itertools
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from loraserve.lora.resolver import _LoRAResolverRegistry

_counter = itertools.count()

MakePlugin = Callable[..., str]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """What the fake plugins did, in order."""
    log: list[tuple] = []
    monkeypatch.setattr(sys, "loraserve_test_events", log, raising=False)
    return log


@pytest.fixture
def make_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, events) -> MakePlugin:
    """Install a fake plugin distribution; returns its module name."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(
        name: str,
        source: str,
        explicit_only: bool = False,
        entry_value: str | None = None,
        dist: str | None = None,
        **fmt: object,
    ) -> str:
        module = f"lsfake_{name}_{next(_counter)}"
        dist = dist or f"lsfake-{name.replace('_', '-')}"
        (site / f"{module}.py").write_text(textwrap.dedent(source).format(name=name, **fmt))
        info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        value = entry_value.format(module=module) if entry_value else module
        entry_points = f"[loraserve.plugins]\n{name} = {value}\n"
        if explicit_only:
            entry_points += f"\n[loraserve.plugins.explicit]\n{name} = {value}\n"
        (info / "entry_points.txt").write_text(entry_points)
        created.append(module)
        return module

    yield make
    for module in created:
        sys.modules.pop(module, None)


@pytest.fixture
def registry() -> _LoRAResolverRegistry:
    """A private resolver registry, so tests never see each other's resolvers."""
    return _LoRAResolverRegistry()
