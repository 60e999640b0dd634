"""LoRAResolverRegistry: vLLM's semantics (register, replace with a warning, KeyError listing)."""

from __future__ import annotations

import inspect
import logging

import pytest

from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver, LoRAResolverRegistry, _LoRAResolverRegistry


class EchoResolver(LoRAResolver):
    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        return LoRARequest(lora_name, 1, f"/adapters/{lora_name}", base_model_name)


def test_resolver_is_abstract():
    with pytest.raises(TypeError):
        LoRAResolver()  # type: ignore[abstract]


def test_signatures_match_vllm():
    assert list(inspect.signature(LoRAResolver.resolve_lora).parameters) == [
        "self",
        "base_model_name",
        "lora_name",
    ]
    assert inspect.iscoroutinefunction(LoRAResolver.resolve_lora)
    assert list(inspect.signature(LoRAResolverRegistry.register_resolver).parameters) == [
        "resolver_name",
        "resolver",
    ]
    assert list(inspect.signature(LoRAResolverRegistry.get_resolver).parameters) == [
        "resolver_name"
    ]


def test_register_get_and_list_in_order():
    registry = _LoRAResolverRegistry()
    first, second = EchoResolver(), EchoResolver()
    registry.register_resolver("b", first)
    registry.register_resolver("a", second)
    assert list(registry.get_supported_resolvers()) == ["b", "a"]
    assert registry.get_resolver("b") is first


def test_reregistering_warns_and_replaces(caplog):
    registry = _LoRAResolverRegistry()
    old, new = EchoResolver(), EchoResolver()
    registry.register_resolver("x", old)
    with caplog.at_level(logging.WARNING, logger="loraserve.lora.resolver"):
        registry.register_resolver("x", new)
    assert "already registered" in caplog.text
    assert registry.get_resolver("x") is new
    assert list(registry.get_supported_resolvers()) == ["x"]


def test_missing_name_lists_registered_ones():
    registry = _LoRAResolverRegistry()
    registry.register_resolver("fs", EchoResolver())
    with pytest.raises(KeyError, match="nope.*fs"):
        registry.get_resolver("nope")


async def test_resolver_returns_request():
    request = await EchoResolver().resolve_lora("base", "sql")
    assert request == LoRARequest("sql", 1, "/adapters/sql", "base")
