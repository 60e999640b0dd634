"""The plugin manager: imports plugins on first need and calls their hooks one plugin at a time.

Start-up only reads metadata (``check``). Resolver plugins are imported when ``resolvers``
is first called (the first unknown model name); the others when the first notification
is sent. Hooks are called plugin by plugin, in the documented order, rather than through
pluggy's LIFO hook call, so the order is ours and one failing plugin cannot hide another.
"""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass
from typing import Any

import pluggy

from loraserve.errors import PluginError
from loraserve.lora.request import LoRARequest
from loraserve.lora.resolver import LoRAResolver, LoRAResolverRegistry, ResolverRegistry
from loraserve.plugins import hookspecs
from loraserve.plugins.discovery import (
    PLUGINS_ENV,
    InstalledPlugin,
    discover_plugins,
    enabled_plugins,
    missing_plugins,
    selection_from_env,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginInfo:
    """What ``loraserve plugins`` shows for one installed plugin."""

    name: str
    distribution: str | None
    version: str | None
    enabled: bool
    explicit_only: bool
    loaded: bool
    hooks: tuple[str, ...]


class PluginManager:
    """Installed plugins (from metadata), the enabled ones, and the ones imported so far."""

    def __init__(
        self,
        selection: list[str] | None,
        registry: ResolverRegistry = LoRAResolverRegistry,
    ) -> None:
        self._selection = selection
        self._registry = registry
        self._lock = threading.RLock()
        self._pm = pluggy.PluginManager("loraserve")
        self._pm.add_hookspecs(hookspecs)
        self._installed: dict[str, InstalledPlugin] | None = None
        self._loaded: dict[str, Any] = {}  # name -> module/object registered with pluggy
        self._broken: dict[str, PluginError] = {}  # name -> why importing it failed
        self._resolver_names: dict[str, list[str]] = {}  # plugin -> resolvers it registered
        self._notifications_ready = False  # enabled plugins imported for notifications
        self._warned_missing = False

    # -- start-up (metadata only) ---------------------------------------------------------

    def installed(self) -> dict[str, InstalledPlugin]:
        """Every installed plugin by name (read once from metadata)."""
        with self._lock:
            if self._installed is None:
                self._installed = discover_plugins()
            return self._installed

    def check(self) -> list[str]:
        """The enabled plugin names, in order. Selected names that are not installed are
        skipped (as in vLLM) with one warning that says what is installed."""
        installed = self.installed()
        missing = missing_plugins(installed, self._selection)
        if missing and not self._warned_missing:
            self._warned_missing = True
            logger.warning(
                "%s names %s, which %s not installed and %s skipped. Installed plugins: %s. "
                "Install the distribution that provides it, or fix %s.",
                PLUGINS_ENV, ", ".join(repr(m) for m in missing),
                "is" if len(missing) == 1 else "are", "is" if len(missing) == 1 else "are",
                ", ".join(sorted(installed)) or "none", PLUGINS_ENV,
            )
        return enabled_plugins(installed, self._selection)

    # -- resolvers --------------------------------------------------------------------------

    def resolvers(self) -> list[tuple[str, LoRAResolver]]:
        """All resolvers in resolution order, importing resolver plugins on the first call.

        Order: each enabled plugin's resolvers (plugins in ``check()`` order, a plugin's
        resolvers in the order it registered them), then resolvers that user code registered
        on ``LoRAResolverRegistry`` directly, in registration order.
        """
        with self._lock:
            enabled = self.check()
            for name in enabled:
                if name not in self._resolver_names:
                    self._resolver_names[name] = self._register_resolvers(name)
            registered = list(self._registry.get_supported_resolvers())
            names = [r for p in enabled for r in self._resolver_names[p] if r in registered]
            names += [r for r in registered if r not in names]
            return [(r, self._registry.get_resolver(r)) for r in names]

    def _register_resolvers(self, name: str) -> list[str]:
        """Run one plugin's ``register_lora_resolvers``; return the names it registered."""
        plugin = self._load(name)
        before = set(self._registry.get_supported_resolvers())
        registered: list[str] = []

        def register(resolver_name: str, resolver: LoRAResolver) -> None:
            if not callable(getattr(resolver, "resolve_lora", None)):
                raise PluginError(
                    f"Plugin '{name}' registered {resolver!r} as '{resolver_name}', "
                    "which has no resolve_lora method; subclass loraserve.lora.resolver.LoRAResolver."
                )
            self._registry.register_resolver(resolver_name, resolver)
            registered.append(resolver_name)

        try:
            if inspect.isfunction(plugin):  # a vLLM-style plugin: a function that registers
                plugin()
            else:
                self._call_plugin("register_lora_resolvers", plugin, register=register)
        except Exception as exc:
            for resolver_name in registered:
                self._registry.unregister_resolver(resolver_name)
            if isinstance(exc, PluginError):
                raise
            raise PluginError(f"Plugin '{name}' failed to register its resolvers: {exc}") from exc
        # A plugin may also call LoRAResolverRegistry.register_resolver itself, as vLLM's do.
        direct = [
            r for r in self._registry.get_supported_resolvers()
            if r not in before and r not in registered
        ]
        return registered + direct

    # -- notifications ----------------------------------------------------------------------

    def notify_loaded(self, lora_request: LoRARequest) -> None:
        """Tell plugins an adapter is loaded; a plugin that raises is logged and ignored."""
        self._notify("lora_adapter_loaded", lora_request=lora_request)

    def notify_evicted(self, lora_name: str) -> None:
        """Tell plugins an adapter was unloaded or evicted."""
        self._notify("lora_adapter_evicted", lora_name=lora_name)

    def notify_load_failed(self, lora_name: str, lora_path: str, error: BaseException) -> None:
        """Tell plugins an adapter failed to load."""
        self._notify(
            "lora_adapter_load_failed", lora_name=lora_name, lora_path=lora_path, error=error
        )

    def _notify(self, hook_name: str, **kwargs: Any) -> None:
        with self._lock:
            if not self._notifications_ready:
                self._notifications_ready = True
                try:
                    names = self.check()
                except PluginError as exc:
                    logger.error("Plugin notifications are off: %s", exc)
                    names = []
                for name in names:
                    try:
                        self._load(name)
                    except PluginError:
                        pass  # logged by _load; notifications never stop serving
        for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
            try:
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception:
                logger.exception("Plugin '%s' raised in %s; ignored.", impl.plugin_name, hook_name)

    # -- loading ----------------------------------------------------------------------------

    def _load(self, name: str) -> Any:
        """Import plugin ``name`` and register it with pluggy (once); PluginError if it fails."""
        if name in self._loaded:
            return self._loaded[name]
        if name in self._broken:
            raise self._broken[name]
        info = self.installed()[name]
        try:
            plugin = self._import_and_register(info)
        except PluginError as exc:
            logger.error("%s", exc)
            self._broken[name] = exc
            raise
        self._loaded[name] = plugin
        logger.info("Loaded plugin '%s' (%s %s).", name, info.distribution, info.version)
        return plugin

    def _import_and_register(self, info: InstalledPlugin) -> Any:
        where = f"'{info.name}' (distribution {info.distribution} {info.version})"
        try:
            plugin = info.entry_point.load()
        except Exception as exc:
            raise PluginError(
                f"Plugin {where} failed to import {info.entry_point.value}: {exc!r}"
            ) from exc
        if inspect.isfunction(plugin):
            return plugin
        try:
            self._pm.register(plugin, name=info.name)
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            known = ", ".join(sorted(self._hook_names()))
            raise PluginError(f"Plugin {where} is invalid: {exc}. Known hooks: {known}") from exc
        return plugin

    def _call_plugin(self, hook_name: str, plugin: Any, **kwargs: Any) -> None:
        for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
            if impl.plugin is plugin:
                impl.function(*[kwargs[arg] for arg in impl.argnames])

    def _hook_names(self) -> list[str]:
        callers = vars(self._pm.hook).items()
        return [n for n, c in callers if isinstance(c, pluggy.HookCaller) and c.has_spec()]

    # -- listing ----------------------------------------------------------------------------

    def list_plugins(self, load: bool = False) -> list[PluginInfo]:
        """Every installed plugin; with ``load=True`` enabled ones are imported to list hooks."""
        with self._lock:
            try:
                enabled = set(self.check())
            except PluginError:
                enabled = set(self._selection or ()) & set(self.installed())
            rows = []
            for name, info in sorted(self.installed().items()):
                if load and name in enabled:
                    try:
                        self._load(name)
                    except PluginError:
                        pass
                rows.append(
                    PluginInfo(
                        name=name,
                        distribution=info.distribution,
                        version=info.version,
                        enabled=name in enabled,
                        explicit_only=info.explicit_only,
                        loaded=name in self._loaded,
                        hooks=self._hooks_of(name),
                    )
                )
            return rows

    def _hooks_of(self, name: str) -> tuple[str, ...]:
        plugin = self._loaded.get(name)
        if plugin is None:
            return ()
        if inspect.isfunction(plugin):
            return ("register_lora_resolvers",)
        return tuple(sorted(caller.name for caller in self._pm.get_hookcallers(plugin) or ()))

    def close(self) -> None:
        """Forget loaded plugins and remove the resolvers they registered (for tests)."""
        with self._lock:
            for names in self._resolver_names.values():
                for resolver_name in names:
                    self._registry.unregister_resolver(resolver_name)
            for plugin in list(self._loaded.values()):
                if self._pm.is_registered(plugin):
                    self._pm.unregister(plugin)
            self._resolver_names.clear()
            self._loaded.clear()
            self._notifications_ready = False


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process's plugin manager, reading ``VLLM_PLUGINS`` when first asked for."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = PluginManager(selection_from_env())
        return _manager


def reset_plugin_manager() -> None:
    """Drop the process's manager and what its plugins registered (tests change the env)."""
    global _manager
    with _manager_lock:
        if _manager is not None:
            _manager.close()
        _manager = None


def list_plugins(load: bool = False) -> list[PluginInfo]:
    """The ``loraserve plugins`` listing: name, distribution, version, hooks, loaded."""
    return get_plugin_manager().list_plugins(load=load)
