"""``loraserve demo``: build the demo files once, then serve them like a real deployment.

Two adapters are loaded at start-up; the third is left for the filesystem resolver, so the
first request naming it shows loading on first use.
"""

from __future__ import annotations

import argparse
import os
import sys

from loraserve.demo import ADAPTER_ANSWERS, LORA_RANK, PRELOADED, SERVED_MODEL_NAME, ensure_demo
from loraserve.entrypoints.openai.server_config import (
    RUNTIME_LORA_ENV,
    LoRAModulePath,
    ServerConfig,
)

RESOLVER_DIR_ENV = "VLLM_LORA_RESOLVER_CACHE_DIR"


def demo_configs(args: argparse.Namespace):  # noqa: ANN201 - (EngineConfig, ServerConfig)
    """Build (first run) the demo and describe it as serve's two configs."""
    from loraserve.config import EngineConfig

    print("Preparing the demo model and adapters (built once: 10-30 s on the first run)...",
          flush=True)
    paths = ensure_demo(args.cache_dir, rebuild=args.rebuild)
    print(f"Demo files: {paths.root}", flush=True)
    # The demo shows runtime loading and resolvers; it sets the switches a user would set.
    os.environ[RUNTIME_LORA_ENV] = "True"
    os.environ[RESOLVER_DIR_ENV] = str(paths.adapters)
    engine = EngineConfig(
        model=str(paths.model),
        served_model_name=SERVED_MODEL_NAME,
        enable_lora=True,
        max_loras=len(ADAPTER_ANSWERS),
        max_lora_rank=max(16, LORA_RANK),
        allow_runtime_lora_updating=True,
    )
    server = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        lora_modules=[LoRAModulePath(name, str(paths.adapter(name))) for name in PRELOADED],
        allow_runtime_lora_updating=True,
    )
    return engine, server


def print_examples(url: str, api_key: str | None) -> None:
    """Ready-to-paste commands for the server that just started."""
    auth = f' -H "Authorization: Bearer {api_key}"' if api_key else ""
    resolved = next(n for n in ADAPTER_ANSWERS if n not in PRELOADED)
    lines = [
        "",
        "Try it (in another terminal):",
        f"  curl -s {url}/v1/models{auth}",
    ]
    for model in (SERVED_MODEL_NAME, *PRELOADED):
        lines.append(
            f"  curl -s {url}/v1/chat/completions{auth} -H 'Content-Type: application/json' "
            f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", "
            f"\"content\": \"Hello!\"}}], \"temperature\": 0}}'"
        )
    lines += [
        f"  # '{resolved}' is not loaded yet: the filesystem resolver finds it on first use",
        f"  curl -s {url}/v1/completions{auth} -H 'Content-Type: application/json' "
        f"-d '{{\"model\": \"{resolved}\", \"prompt\": \"Who are you?\", \"max_tokens\": 32, "
        "\"temperature\": 0}'",
        f"  curl -sN {url}/v1/completions{auth} -H 'Content-Type: application/json' "
        f"-d '{{\"model\": \"pirate\", \"prompt\": \"Hello!\", \"max_tokens\": 32, "
        "\"stream\": true}'",
        "",
    ]
    if not _filesystem_resolver_installed():
        lines.insert(-1, "  (note: the filesystem resolver plugin is not installed, so "
                         f"'{resolved}' will be a 404; pip install ./resolvers/filesystem)")
    print("\n".join(lines), flush=True)
    sys.stdout.flush()


def _filesystem_resolver_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "lora_filesystem_resolver"
               for ep in entry_points(group="loraserve.plugins"))
