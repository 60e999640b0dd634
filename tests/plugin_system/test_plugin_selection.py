"""VLLM_PLUGINS: unset, empty, a list, an unknown name; explicit-only plugins; metadata only."""

from __future__ import annotations

import logging
import sys

import pytest
from fake_plugin_sources import NOTIFY_PLUGIN, RESOLVER_PLUGIN

from loraserve.errors import PluginError
from loraserve.plugins import PluginManager, get_plugin_manager, reset_plugin_manager
from loraserve.plugins.discovery import parse_plugin_selection


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", []), (" , ", []), ("a", ["a"]), ("b, a,b ,", ["b", "a"])],
)
def test_parse_selection(value, expected):
    assert parse_plugin_selection(value) == expected


@pytest.fixture
def three_plugins(make_plugin):
    """zeta and alpha are ordinary plugins; remote is explicit-only."""
    modules = {
        "zeta": make_plugin("zeta", NOTIFY_PLUGIN),
        "alpha": make_plugin("alpha", RESOLVER_PLUGIN, resolvers={"a": ["x"]}),
        "remote": make_plugin("remote", RESOLVER_PLUGIN, explicit_only=True, resolvers={"r": []}),
    }
    return modules


def test_unset_enables_all_but_explicit_only_sorted(three_plugins):
    enabled = PluginManager(None).check()
    assert [n for n in enabled if n in three_plugins] == ["alpha", "zeta"]
    assert enabled == sorted(enabled)


def test_empty_enables_none(three_plugins):
    assert PluginManager([]).check() == []


def test_list_enables_exactly_those_in_order(three_plugins):
    assert PluginManager(["zeta", "remote"]).check() == ["zeta", "remote"]


def test_unknown_name_is_skipped_with_one_clear_warning(three_plugins, caplog):
    """As vLLM: a listed plugin that is not installed is skipped (uninstalled means gone),
    and the log says which one and what is installed."""
    manager = PluginManager(["nope", "alpha"])
    with caplog.at_level(logging.WARNING, logger="loraserve.plugins.manager"):
        assert manager.check() == ["alpha"]
        assert manager.check() == ["alpha"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'nope'" in warnings[0] and "not installed" in warnings[0]
    for installed in ("alpha", "remote", "zeta"):
        assert installed in warnings[0]


def test_check_imports_nothing(three_plugins, events):
    PluginManager(None).check()
    PluginManager(["remote", "alpha"]).check()
    assert events == []
    assert not any(module in sys.modules for module in three_plugins.values())


def test_env_var_drives_the_process_manager(three_plugins, monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "remote")
    reset_plugin_manager()
    try:
        assert get_plugin_manager().check() == ["remote"]
        monkeypatch.setenv("VLLM_PLUGINS", "")
        reset_plugin_manager()
        assert get_plugin_manager().check() == []
        monkeypatch.setenv("VLLM_PLUGINS", "missing,remote")
        reset_plugin_manager()
        assert get_plugin_manager().check() == ["remote"]
    finally:
        reset_plugin_manager()


def test_two_distributions_claiming_one_name(make_plugin):
    make_plugin("same", NOTIFY_PLUGIN, dist="lsfake-one")
    make_plugin("same", NOTIFY_PLUGIN, dist="lsfake-two")
    with pytest.raises(PluginError, match="two distributions"):
        PluginManager([]).check()


def test_listing_shows_metadata_without_importing(three_plugins):
    rows = {row.name: row for row in PluginManager(["alpha", "remote"]).list_plugins()}
    assert rows["alpha"].version == "1.2.3" and rows["alpha"].distribution == "lsfake-alpha"
    assert rows["alpha"].enabled and not rows["alpha"].loaded and rows["alpha"].hooks == ()
    assert rows["remote"].explicit_only and rows["remote"].enabled
    assert not rows["zeta"].enabled


def test_listing_with_load_shows_hooks(three_plugins):
    rows = {row.name: row for row in PluginManager(["alpha", "zeta"]).list_plugins(load=True)}
    assert rows["alpha"].loaded and rows["alpha"].hooks == ("register_lora_resolvers",)
    assert rows["zeta"].hooks == (
        "lora_adapter_evicted",
        "lora_adapter_load_failed",
        "lora_adapter_loaded",
    )
    assert not rows["remote"].loaded
