"""``loraserve serve``'s flags (vLLM's names, parsed as vLLM parses them) and the one place
they and the environment become ``EngineConfig`` and ``ServerConfig``.

The flags that mean something here act as in vLLM; every other flag of ``vllm serve`` is
accepted and ignored with one warning each (``vllm_options``), so a vLLM launch line runs.
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import os
import re
import sys

from loraserve.entrypoints.openai.server_config import (
    CORSConfig,
    LoRAModulePath,
    RequestLimits,
    ServerConfig,
    runtime_lora_updating_from_env,
)
from loraserve.entrypoints.openai.tool_parsers import TOOL_PARSERS
from loraserve.entrypoints.vllm_options import add_ignored_flags, ignored_flag_warnings
from loraserve.version import __version__

logger = logging.getLogger("loraserve.entrypoints.cli")

API_KEY_ENV = "VLLM_API_KEY"
DTYPES = {"auto": "auto", "half": "float16", "float16": "float16", "bfloat16": "bfloat16",
          "float": "float32", "float32": "float32"}  # vLLM's names -> loraserve's
ACCESS_LOG_LEVELS = ["critical", "error", "warning", "info", "debug", "trace"]  # uvicorn's


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


_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kmgtKMGT]?)")
_SCALES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
           "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def human_int(value: str) -> int:
    """vLLM's readable integers: ``32k`` is 32,000 and ``32K`` is 32,768 (k m g t decimal,
    K M G T binary and whole); positive only."""
    match = _HUMAN_INT.fullmatch(value.strip())
    if match is None or (match[2].isupper() and "." in match[1]):
        raise argparse.ArgumentTypeError(
            f"expected a positive integer such as 2048, 32k or 4G, got {value!r}")
    number, scale = match[1], _SCALES[match[2]]
    result = int(float(number) * scale) if "." in number else int(number) * scale
    if result < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return result


def _json_list(value: str) -> list[str]:
    """``--allowed-origins '["https://a.example"]'``: a JSON array of strings, as vLLM."""
    try:
        items = json.loads(value)
    except json.JSONDecodeError:
        items = None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise argparse.ArgumentTypeError(
            f'expected a JSON array of strings such as \'["*"]\', got {value!r}')
    return items


def _json_object(value: str) -> dict:
    try:
        mapping = json.loads(value)
    except json.JSONDecodeError:
        mapping = None
    if not isinstance(mapping, dict):
        raise argparse.ArgumentTypeError(
            f'expected a JSON object such as \'{{"temperature": 0.5}}\', got {value!r}')
    return mapping


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``serve`` and ``demo``: where to listen and who may call."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to bind (default: %(default)s; use 0.0.0.0 to expose it).")
    parser.add_argument("--port", type=int, default=8000, help="Port to bind (default: %(default)s).")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help="Require 'Authorization: Bearer KEY' on every /v1 route "
                             f"(default: ${API_KEY_ENV} if set; /health and /metrics stay open).")
    parser.add_argument("--log-level", default=None,
                        choices=["debug", "info", "warning", "error"],
                        help="Logging verbosity (default: $VLLM_LOGGING_LEVEL, or info).")


def add_frontend_flags(parser: argparse.ArgumentParser) -> None:
    """The HTTP side: CORS, proxy prefix, access log, chat defaults (vLLM's frontend flags)."""
    front = parser.add_argument_group("HTTP frontend")
    front.add_argument("--allowed-origins", type=_json_list, default=["*"], metavar="JSON",
                       help='CORS: origins allowed, a JSON array (default: \'["*"]\').')
    front.add_argument("--allowed-methods", type=_json_list, default=["*"], metavar="JSON",
                       help='CORS: methods allowed, a JSON array (default: \'["*"]\').')
    front.add_argument("--allowed-headers", type=_json_list, default=["*"], metavar="JSON",
                       help='CORS: request headers allowed, a JSON array (default: \'["*"]\').')
    front.add_argument("--allow-credentials", action=argparse.BooleanOptionalAction, default=False,
                       help="CORS: let browsers send cookies and auth headers (default: off).")
    front.add_argument("--root-path", default=None, metavar="PREFIX",
                       help="Path prefix a proxy adds (e.g. /llm): routes answer with and "
                            "without it.")
    front.add_argument("--uvicorn-log-level", default="info", choices=ACCESS_LOG_LEVELS,
                       help="Level of the HTTP server's own log, the access log included "
                            "(one line per request at info; default: %(default)s).")
    front.add_argument("--disable-uvicorn-access-log", action=argparse.BooleanOptionalAction,
                       default=False, help="No access log line per request.")
    front.add_argument("--chat-template", default=None, metavar="FILE_OR_TEXT",
                       help="Chat template for every chat request instead of the tokenizer's: "
                            "a file, or the template itself in one line.")
    front.add_argument("--trust-request-chat-template", action=argparse.BooleanOptionalAction,
                       default=False,
                       help="Let requests bring their own 'chat_template' (refused otherwise).")
    front.add_argument("--enable-tokenizer-info-endpoint", action=argparse.BooleanOptionalAction,
                       default=False,
                       help="Answer GET /tokenizer_info (the tokenizer's special tokens and chat "
                            "template; lm-eval's remote tokenizer needs it).")
    front.add_argument("--enable-auto-tool-choice", action="store_true", default=False,
                       help="Let chat requests use tool_choice 'auto': the model decides, and "
                            "--tool-call-parser reads its calls.")
    front.add_argument("--tool-call-parser", default=None, metavar="NAME",
                       help="How the model writes tool calls: one of "
                            f"{', '.join(sorted(TOOL_PARSERS))} (vLLM's names).")
    front.add_argument("--response-role", default="assistant", metavar="ROLE",
                       help="The role of chat answers when the request adds a generation "
                            "prompt (default: %(default)s).")


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
    limits.add_argument("--max-logprobs", type=int, default=20, metavar="N",
                        help="Most logprobs a request may ask for per token, prompt or output "
                             "(-1: the vocabulary; default: %(default)s).")


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Model, batching and LoRA capacity flags (vLLM's names)."""
    parser.add_argument("--model", default=None, metavar="MODEL",
                        help="MODEL as a flag (vLLM's older form); the positional one wins.")
    parser.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                        help="Name(s) clients use for the base model; the first is the one "
                             "resolvers and adapter listings use (default: MODEL as given).")
    parser.add_argument("--tokenizer", default=None, metavar="DIR",
                        help="A Hugging Face tokenizer directory to use instead of MODEL's own "
                             "(for a GGUF file whose tokenizer loraserve cannot build).")
    parser.add_argument("--generation-config", default="auto", metavar="auto|vllm|DIR",
                        help="Sampling defaults for fields a request leaves out (temperature, "
                             "top_p, top_k, repetition_penalty; max_new_tokens caps max_tokens): "
                             "'auto' reads MODEL's generation_config.json, 'vllm' ignores it, "
                             "or a directory's (default: %(default)s).")
    parser.add_argument("--override-generation-config", type=_json_object, default=None,
                        metavar="JSON", help="Sampling defaults set over --generation-config's, "
                                             'e.g. \'{"temperature": 0.5}\'.')
    parser.add_argument("--dtype", default="auto", choices=list(DTYPES),
                        help="Weight and activation dtype (default: the model's, float32 on CPU).")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="Where the model runs (default: cuda if available).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: %(default)s).")
    parser.add_argument("--max-model-len", type=human_int, default=None,
                        help="Context length limit, prompt plus output, e.g. 4096 or 4k "
                             "(default: the model's).")
    parser.add_argument("--max-num-seqs", type=_positive_int, default=64,
                        help="Most sequences decoded in one batch (default: %(default)s).")
    parser.add_argument("--max-num-batched-tokens", type=human_int, default=None,
                        help="Tokens one step may feed the model; a step's first prompt always "
                             "goes in whole (no chunked prefill) (default: the larger of 4096 "
                             "and --max-model-len).")
    parser.add_argument("--block-size", type=_positive_int, default=16,
                        help="Tokens per KV-cache block (default: %(default)s).")
    parser.add_argument("--kv-cache-memory-bytes", type=human_int, default=None, metavar="BYTES",
                        help="KV-cache size, e.g. 4G (default: 80%% of free GPU memory, 2 GiB "
                             "on CPU).")
    parser.add_argument("--disable-log-stats", action="store_true",
                        help="No periodic statistics line in the log.")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="Run every step eagerly: no CUDA graphs for decode steps (on CUDA "
                             "they are captured per batch-size bucket; CPU always runs eagerly).")
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=False,
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
    lora.add_argument("--lora-dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                      help="Adapter weights' dtype; loraserve runs them in the model's, so "
                           "another value is ignored with a warning (default: %(default)s).")
    lora.add_argument("--lora-merge", action=argparse.BooleanOptionalAction, default=True,
                      help="When one adapter has owned every batch for 24 steps, run its "
                           "batches on a merged copy of the weights (float32 on CPU only; "
                           "costs one more copy of the projections; default: on).")


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("model_tag", nargs="?", metavar="MODEL",
                       help="Local Hugging Face-format model directory, or a GGUF file.")
    serve.add_argument("--config", default=None, metavar="FILE",
                       help="A YAML file of flags (vLLM's: keys are flag names, e.g. "
                            "'max-num-seqs: 8'); flags on the command line win.")
    serve.add_argument("--version", action="version", version=f"loraserve {__version__}")
    add_engine_flags(serve)
    add_server_flags(serve)
    add_frontend_flags(serve)
    add_limit_flags(serve)
    add_distributed_flags(serve)
    add_ignored_flags(serve)


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """Serving through Ray Serve (the ``loraserve[ray]`` extra): docs/scaling.md."""
    group = parser.add_argument_group("replicas (Ray Serve)")
    group.add_argument("--num-replicas", type=_positive_int, default=None, metavar="N",
                       help="Serve through Ray Serve with N engine replicas (needs "
                            "'pip install loraserve[ray]'); every response names its replica "
                            "in x-loraserve-replica.")
    group.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="Join this Ray cluster (e.g. 'auto' or ray://host:10001) instead "
                            "of starting one.")
    group.add_argument("--affinity-router", action="store_true",
                       help="Route adapters with loraserve's bounded-load affinity router "
                            "instead of Ray's stock multiplex routing.")
    group.add_argument("--registry-dir", default=None, metavar="DIR",
                       help="The folder replicas share for adapters loaded through the API and "
                            "their reports; a shared mount on several nodes (default: a "
                            "temporary folder, removed at exit).")
    group.add_argument("--replica-cpus", type=float, default=1.0, metavar="CPUS",
                       help="CPUs reserved per replica; torch uses that many threads "
                            "(default: %(default)s).")


def load_chat_template(value: str | None) -> str | None:
    """``--chat-template``: a file's text, or the template itself (vLLM's rule: text with
    none of ``{``, ``}`` or a newline is a path, and a missing file is an error)."""
    if value is None:
        return None
    try:
        with open(value, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        if not any(c in value for c in "{}\n"):
            raise ValueError(
                f"--chat-template {value!r} looks like a file path, but it cannot be read: "
                f"{exc.strerror or exc}") from None
    # one-line templates spell newlines and tabs as \n and \t, as in vLLM
    return codecs.decode(value.encode("latin-1", "backslashreplace"), "unicode_escape")


def _flag_error(message: str) -> SystemExit:
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(2)  # a flag error, like argparse's own


def configs_from_args(args: argparse.Namespace):  # noqa: ANN201 - (EngineConfig, ServerConfig)
    """The one place flags and environment become configuration; warns once per ignored flag."""
    from loraserve.chat_template import compile_template
    from loraserve.config import EngineConfig

    model = args.model_tag or args.model
    if not model:
        raise _flag_error("MODEL is required (as the first argument, --model, or 'model' in --config)")
    if args.lora_modules and not args.enable_lora:
        raise _flag_error("--lora-modules needs --enable-lora")
    try:
        chat_template = load_chat_template(args.chat_template)
        if chat_template is not None:
            compile_template(chat_template)  # a syntax error stops start-up, not a request
    except Exception as exc:  # the file's reason, or jinja's
        raise _flag_error(f"invalid --chat-template: {exc}") from None
    if args.enable_auto_tool_choice and not args.tool_call_parser:  # vLLM's rule
        raise _flag_error("--enable-auto-tool-choice needs --tool-call-parser "
                          f"({', '.join(sorted(TOOL_PARSERS))})")
    if args.tool_call_parser and args.tool_call_parser not in TOOL_PARSERS:
        raise _flag_error(f"invalid --tool-call-parser {args.tool_call_parser!r}: choose from "
                          f"{', '.join(sorted(TOOL_PARSERS))}")
    for line in ignored_flag_warnings(args):
        logger.warning(line)
    runtime = runtime_lora_updating_from_env()
    engine = EngineConfig(
        model=model,
        served_model_name=args.served_model_name[0] if args.served_model_name else None,
        tokenizer=args.tokenizer,
        dtype=DTYPES[args.dtype],
        seed=args.seed,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        device=args.device,
        enable_lora=args.enable_lora,
        max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank,
        max_cpu_loras=args.max_cpu_loras,
        lora_dtype=args.lora_dtype,
        lora_merge=args.lora_merge,
        allow_runtime_lora_updating=runtime,
        max_logprobs=args.max_logprobs,
        generation_config=args.generation_config,
        override_generation_config=args.override_generation_config,
        disable_log_stats=args.disable_log_stats,
        enforce_eager=args.enforce_eager,
    )
    server = ServerConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key or None,
        lora_modules=list(args.lora_modules),
        allow_runtime_lora_updating=runtime,
        served_model_aliases=list(args.served_model_name or [])[1:],
        limits=RequestLimits(args.max_prompts_per_request, args.max_sequences_per_request),
        chat_template=chat_template,
        trust_request_chat_template=args.trust_request_chat_template,
        enable_tokenizer_info_endpoint=args.enable_tokenizer_info_endpoint,
        response_role=args.response_role,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
        root_path=(args.root_path or "").rstrip("/"),
        cors=CORSConfig(args.allowed_origins, args.allowed_methods, args.allowed_headers,
                        args.allow_credentials),
        http_log_level=args.uvicorn_log_level,
        access_log=not args.disable_uvicorn_access_log,
    )
    return engine, server
