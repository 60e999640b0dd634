"""What the HTTP layer needs besides the engine, filled once by the CLI (flags and env)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


def runtime_lora_updating_from_env() -> bool:
    """vLLM's switch: ``True`` or ``1`` (any case) enables load/unload and resolvers."""
    return os.environ.get(RUNTIME_LORA_ENV, "").strip().lower() in ("1", "true")


@dataclass
class LoRAModulePath:
    """One ``--lora-modules`` item: an adapter to load at start-up."""

    name: str
    path: str
    base_model_name: str | None = None


@dataclass
class RequestLimits:
    """How much one request may ask for: checked right after its body is parsed, before any
    tokenizing, so one client cannot hold the tokenizer or the engine for everyone."""

    max_prompts_per_request: int = 1024  # --max-prompts-per-request
    max_sequences_per_request: int = 2048  # --max-sequences-per-request: prompts x n


@dataclass
class CORSConfig:
    """Which browser pages may call the server (vLLM's flags and defaults: everyone, without
    credentials)."""

    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False


@dataclass
class ServerConfig:
    """Listening address, auth, LoRA policy and HTTP behaviour of one server."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    lora_modules: list[LoRAModulePath] = field(default_factory=list)
    allow_runtime_lora_updating: bool = False
    # further --served-model-name values: names that also mean the base model (as in vLLM)
    served_model_aliases: list[str] = field(default_factory=list)
    limits: RequestLimits = field(default_factory=RequestLimits)
    chat_template: str | None = None  # --chat-template: used instead of the tokenizer's
    trust_request_chat_template: bool = False  # requests may bring their own chat_template
    enable_tokenizer_info_endpoint: bool = False  # GET /tokenizer_info, as vLLM's flag
    response_role: str = "assistant"  # chat answers' role when a generation prompt is added
    enable_auto_tool_choice: bool = False  # tool_choice "auto" allowed (needs tool_call_parser)
    tool_call_parser: str | None = None  # --tool-call-parser: a name in tool_parsers
    root_path: str = ""  # --root-path: a proxy's prefix, answered with and without it
    cors: CORSConfig = field(default_factory=CORSConfig)
    http_log_level: str = "info"  # --uvicorn-log-level: the HTTP server's loggers
    access_log: bool = True  # one line per request, at info
