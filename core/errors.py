"""Exceptions users see; the OpenAI server maps each class to one HTTP status in one place."""

from __future__ import annotations


def quoted(name: str) -> str:
    """``'name'`` as messages show it; escaped when it holds a newline or other control
    character, so a name from a request can never forge a log line."""
    return f"'{name}'" if name.isprintable() else repr(name)


class LoRAServeError(Exception):
    """Base class of loraserve's own errors."""


class InvalidRequestError(LoRAServeError, ValueError):
    """The request itself is wrong (HTTP 400); ``param`` names the request field at fault
    (``"messages[0].content"``), as OpenAI's error object does."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class LoRAAdapterError(LoRAServeError, ValueError):
    """An adapter was refused; the message names the adapter and the reason (HTTP 400)."""

    def __init__(self, lora_name: str, reason: str) -> None:
        super().__init__(f"LoRA adapter {quoted(lora_name)}: {reason}")
        self.lora_name = lora_name
        self.reason = reason


class LoRAAlreadyLoadedError(InvalidRequestError):
    """The load endpoint's rule: a name is loaded once until it is unloaded (HTTP 400)."""

    def __init__(self, lora_name: str) -> None:
        super().__init__(f"The lora adapter {quoted(lora_name)} has already been loaded.")
        self.lora_name = lora_name


class LoRANotFoundError(LoRAServeError, LookupError):
    """No loaded adapter or resolver knows this model name (HTTP 404)."""

    def __init__(self, model_name: str, detail: str = "") -> None:
        shown = model_name if model_name.isprintable() else repr(model_name)
        message = f"The model `{shown}` does not exist."
        super().__init__(f"{message} {detail}".strip())
        self.model_name = model_name


class UnsupportedModelError(LoRAServeError, ValueError):
    """The base model's architecture or files are not supported."""


class PluginError(LoRAServeError, RuntimeError):
    """A plugin could not be found, loaded or configured (a start-up error)."""


class AdapterDownloadError(LoRAServeError, ConnectionError):
    """A remote adapter exists but could not be fetched (HTTP 503; retrying later may work)."""

    def __init__(self, lora_name: str, location: str, reason: str) -> None:
        super().__init__(
            f"LoRA adapter {quoted(lora_name)}: download from {location} failed: {reason}"
        )
        self.lora_name = lora_name
        self.location = location
        self.reason = reason
