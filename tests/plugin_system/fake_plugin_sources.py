"""Source of fake plugin modules that record what happens to them in ``sys.loraserve_test_events``."""

from __future__ import annotations

RESOLVER_PLUGIN = """
import sys
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver
from loraserve.plugins import hookimpl

sys.loraserve_test_events.append(("imported", {name!r}))


class Resolver(LoRAResolver):
    def __init__(self, knows):
        self.knows = knows

    async def resolve_lora(self, base_model_name, lora_name):
        sys.loraserve_test_events.append(("resolve", {name!r}, lora_name))
        if lora_name in self.knows:
            return LoRARequest(lora_name, 1, "/adapters/{name}/" + lora_name, base_model_name)
        return None


@hookimpl
def register_lora_resolvers(register):
    for resolver_name, knows in {resolvers!r}.items():
        register(resolver_name, Resolver(knows))
"""

NOTIFY_PLUGIN = """
import sys
from loraserve.plugins import hookimpl

sys.loraserve_test_events.append(("imported", {name!r}))


@hookimpl
def lora_adapter_loaded(lora_request):
    sys.loraserve_test_events.append(("loaded", {name!r}, lora_request.lora_name))


@hookimpl
def lora_adapter_evicted(lora_name):
    sys.loraserve_test_events.append(("evicted", {name!r}, lora_name))


@hookimpl
def lora_adapter_load_failed(lora_name, lora_path, error):
    sys.loraserve_test_events.append(("failed", {name!r}, lora_name, str(error)))
"""
