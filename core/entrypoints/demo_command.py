"""``loraserve demo``: build the demo files once, then serve them like a real deployment.

Some adapters are loaded at start-up; one is left for the filesystem resolver, so the first
request naming it shows loading on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex

from loraserve.demo import Demo, ensure_demo
from loraserve.entrypoints.openai.server_config import (
    RUNTIME_LORA_ENV,
    LoRAModulePath,
    ServerConfig,
)

RESOLVER_DIR_ENV = "VLLM_LORA_RESOLVER_CACHE_DIR"


def build_demo(args: argparse.Namespace) -> Demo:
    print("Preparing the demo model and adapters (built once; later runs start at once)...",
          flush=True)
    demo = ensure_demo(args.cache_dir, rebuild=args.rebuild, tiny=args.tiny)
    print(f"Demo files: {demo.root}", flush=True)
    return demo


def demo_configs(demo: Demo, args: argparse.Namespace):  # noqa: ANN201 - (EngineConfig, ServerConfig)
    """The demo described as serve's two configs."""
    from loraserve.config import EngineConfig

    # The demo shows runtime loading and resolvers; it sets the switches a user would set.
    os.environ[RUNTIME_LORA_ENV] = "True"
    os.environ[RESOLVER_DIR_ENV] = str(demo.adapters_dir)
    engine = EngineConfig(
        model=str(demo.model),
        served_model_name=demo.served_model_name,
        enable_lora=True,
        max_loras=len(demo.adapters),
        max_lora_rank=demo.max_lora_rank,
        allow_runtime_lora_updating=True,
    )
    server = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        lora_modules=[LoRAModulePath(name, str(demo.adapter(name))) for name in demo.preloaded],
        allow_runtime_lora_updating=True,
    )
    return engine, server


def print_examples(demo: Demo, url: str, api_key: str | None) -> None:
    """Ready-to-paste commands for the server that just started."""
    auth = f" -H {shlex.quote(f'Authorization: Bearer {api_key}')}" if api_key else ""
    post = f"-H 'Content-Type: application/json'{auth}"
    lazy = [name for name in demo.adapters if name not in demo.preloaded]
    lines = ["", "Try it (in another terminal):", f"  curl -s {url}/v1/models{auth}"]
    for model in (demo.served_model_name, *demo.adapters):
        if model in lazy:
            lines.append(f"  # '{model}' is not loaded yet: the filesystem resolver finds it on first use")
        if model in demo.completion_examples:
            body = {"model": model, "prompt": demo.completion_examples[model], "max_tokens": 64,
                    "temperature": 0, "stop": ["[/assistant]"]}
            lines.append(f"  curl -s {url}/v1/completions {post} -d {shlex.quote(json.dumps(body))}")
        else:
            message = demo.chat_examples.get(model, "Hello!")
            body = {"model": model, "messages": [{"role": "user", "content": message}],
                    "max_tokens": 64, "temperature": 0}
            lines.append(f"  curl -s {url}/v1/chat/completions {post} -d {shlex.quote(json.dumps(body))}")
    if lazy and not _filesystem_resolver_installed():
        lines.append(f"  (note: the filesystem resolver plugin is not installed, so {lazy[0]!r} "
                     "will be a 404; pip install ./resolvers/filesystem)")
    print("\n".join([*lines, ""]), flush=True)


def _filesystem_resolver_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "lora_filesystem_resolver"
               for ep in entry_points(group="loraserve.plugins"))
