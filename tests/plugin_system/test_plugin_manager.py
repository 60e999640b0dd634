"""Lazy loading, resolver order, notifications and plugin validation."""

from __future__ import annotations

import logging

import pytest
from fake_plugin_sources import NOTIFY_PLUGIN, RESOLVER_PLUGIN

from loraserve.errors import PluginError
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver
from loraserve.plugins import PluginManager


class UserResolver(LoRAResolver):
    async def resolve_lora(self, base_model_name, lora_name):
        return None


def test_resolver_plugins_load_on_first_resolvers_call(make_plugin, events, registry):
    make_plugin("b_plugin", RESOLVER_PLUGIN, resolvers={"b1": [], "b2": []})
    make_plugin("a_plugin", RESOLVER_PLUGIN, resolvers={"a1": []})
    manager = PluginManager(None, registry=registry)
    manager.check()
    assert events == []
    names = [name for name, _ in manager.resolvers()]
    assert names[-3:] == ["a1", "b1", "b2"]  # sorted plugins; a plugin's own order kept
    assert ("imported", "a_plugin") in events and ("imported", "b_plugin") in events
    events.clear()
    manager.resolvers()
    assert events == []  # imported and registered once


def test_order_follows_vllm_plugins_then_user_registered(make_plugin, registry):
    registry.register_resolver("user_first", UserResolver())
    make_plugin("a_plugin", RESOLVER_PLUGIN, resolvers={"a1": []})
    make_plugin("b_plugin", RESOLVER_PLUGIN, resolvers={"b1": []})
    manager = PluginManager(["b_plugin", "a_plugin"], registry=registry)
    registry.register_resolver("user_second", UserResolver())
    names = [name for name, _ in manager.resolvers()]
    assert names == ["b1", "a1", "user_first", "user_second"]


def test_disabled_plugins_are_never_imported(make_plugin, events, registry):
    make_plugin("on", RESOLVER_PLUGIN, resolvers={"on": []})
    make_plugin("off", RESOLVER_PLUGIN, resolvers={"off": []})
    manager = PluginManager(["on"], registry=registry)
    assert [name for name, _ in manager.resolvers()] == ["on"]
    manager.notify_evicted("x")
    assert ("imported", "off") not in events


def test_empty_selection_still_uses_user_resolvers(make_plugin, events, registry):
    make_plugin("on", RESOLVER_PLUGIN, resolvers={"on": []})
    registry.register_resolver("mine", UserResolver())
    assert [name for name, _ in PluginManager([], registry=registry).resolvers()] == ["mine"]
    assert events == []


def test_notifications_load_plugins_lazily_and_reach_each(make_plugin, events, registry):
    make_plugin("n1", NOTIFY_PLUGIN)
    make_plugin("n2", NOTIFY_PLUGIN)
    manager = PluginManager(["n1", "n2"], registry=registry)
    assert events == []
    request = LoRARequest("sql", 3, "/a/sql")
    manager.notify_loaded(request)
    manager.notify_evicted("sql")
    manager.notify_load_failed("bad", "/a/bad", ValueError("rank too big"))
    assert sorted(e for e in events if e[0] == "loaded") == [
        ("loaded", "n1", "sql"),
        ("loaded", "n2", "sql"),
    ]
    assert ("evicted", "n2", "sql") in events
    assert ("failed", "n1", "bad", "rank too big") in events


def test_notification_that_raises_is_logged_and_ignored(make_plugin, events, registry, caplog):
    make_plugin(
        "boom",
        "from loraserve.plugins import hookimpl\n\n"
        "@hookimpl\ndef lora_adapter_evicted(lora_name):\n    raise RuntimeError('meter down')\n",
    )
    make_plugin("fine", NOTIFY_PLUGIN)
    manager = PluginManager(["boom", "fine"], registry=registry)
    with caplog.at_level(logging.ERROR):
        manager.notify_evicted("sql")
    assert ("evicted", "fine", "sql") in events
    assert "boom" in caplog.text and "meter down" in caplog.text


@pytest.mark.parametrize(
    ("name", "hook", "message"),
    [
        ("typo", "register_lora_resolver(register)", "typo.*register_lora_resolver"),
        ("args", "lora_adapter_evicted(name)", "args"),
    ],
    ids=["misspelt_hook", "wrong_hook_arguments"],
)
def test_bad_hook_implementation_is_a_plugin_error(make_plugin, registry, name, hook, message):
    make_plugin(
        name, f"from loraserve.plugins import hookimpl\n\n@hookimpl\ndef {hook}:\n    pass\n"
    )
    with pytest.raises(PluginError, match=message):
        PluginManager([name], registry=registry).resolvers()


def test_import_failure_names_the_plugin_and_notifications_survive(make_plugin, registry, caplog):
    make_plugin("broken", "raise ImportError('needs s3fs; pip install s3fs')\n")
    manager = PluginManager(["broken"], registry=registry)
    with pytest.raises(PluginError, match="broken.*s3fs"):
        manager.resolvers()
    manager.notify_evicted("x")  # does not raise


def test_registering_a_non_resolver_is_a_plugin_error(make_plugin, registry):
    make_plugin(
        "bad",
        "from loraserve.plugins import hookimpl\n\n"
        "@hookimpl\ndef register_lora_resolvers(register):\n    register('bad', object())\n",
    )
    with pytest.raises(PluginError, match="resolve_lora"):
        PluginManager(["bad"], registry=registry).resolvers()
    assert "bad" not in registry.get_supported_resolvers()


def test_vllm_style_function_plugin(make_plugin, registry, monkeypatch):
    """An entry point naming a function is called once, like a vLLM general plugin."""
    import loraserve.lora.resolver as resolver_module

    monkeypatch.setattr(resolver_module, "LoRAResolverRegistry", registry)
    make_plugin(
        "ported",
        "from loraserve.lora import resolver\n\n"
        "class R(resolver.LoRAResolver):\n"
        "    async def resolve_lora(self, base_model_name, lora_name):\n        return None\n\n"
        "def register():\n"
        "    resolver.LoRAResolverRegistry.register_resolver('Ported Resolver', R())\n",
        entry_value="{module}:register",
    )
    manager = PluginManager(["ported"], registry=registry)
    assert [name for name, _ in manager.resolvers()] == ["Ported Resolver"]
    assert {row.name: row.hooks for row in manager.list_plugins()}["ported"] == (
        "register_lora_resolvers",
    )


def test_close_removes_what_plugins_registered(make_plugin, registry):
    make_plugin("p", RESOLVER_PLUGIN, resolvers={"p1": []})
    registry.register_resolver("mine", UserResolver())
    manager = PluginManager(["p"], registry=registry)
    manager.resolvers()
    manager.close()
    assert list(registry.get_supported_resolvers()) == ["mine"]


def test_notifications_survive_a_selection_naming_a_missing_plugin(make_plugin, registry, caplog):
    manager = PluginManager(["not_installed"], registry=registry)
    with caplog.at_level(logging.WARNING):
        manager.notify_evicted("x")
    assert "'not_installed', which is not installed and is skipped" in caplog.text
