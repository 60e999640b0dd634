"""Helpers for testing remote resolvers: tiny adapter files and a faulty local file server.

Everything binds 127.0.0.1 and builds adapters from a seed (no peft, no model needed), so
a resolver plugin's tests can check downloads, stalls and dropped connections quickly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from loraserve.lora.download.source import ADAPTER_CONFIG, ADAPTER_WEIGHTS


def lora_adapter_files(
    base_model_name: str,
    rank: int = 4,
    hidden: int = 64,
    layers: int = 2,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
) -> dict[str, bytes]:
    """``{adapter_config.json: ..., adapter_model.safetensors: ...}`` of a PEFT-shaped LoRA."""
    import torch
    from safetensors.torch import save

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for target in targets:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen)  # [r, in]
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(
                hidden, rank, generator=gen
            )  # [out, r]
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": base_model_name,
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(targets),
        "task_type": "CAUSAL_LM",
    }
    return {
        ADAPTER_CONFIG: json.dumps(config, indent=2).encode(),
        ADAPTER_WEIGHTS: save(tensors),
    }


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@dataclass
class Faults:
    """Misbehaviour for the next ``times`` file bodies: ``stall`` or ``drop`` after ``after`` bytes."""

    mode: str | None = None  # None, "stall", "drop" or "status"
    after: int = 0
    times: int = 10**9
    status: int = 500
    only: str | None = None  # apply only to paths ending with this

    def take(self, path: str) -> str | None:
        if self.mode is None or self.times <= 0 or (self.only and not path.endswith(self.only)):
            return None
        self.times -= 1
        return self.mode


@dataclass
class RequestLog:
    """Counts of (method, path) served, for "exactly one download" assertions."""

    counts: Counter = field(default_factory=Counter)

    def gets(self, suffix: str = "") -> int:
        return sum(n for (m, p), n in self.counts.items() if m == "GET" and p.endswith(suffix))


async def serve_bytes(request, data: bytes, faults: Faults, headers: dict[str, str] | None = None):
    """Answer HEAD/GET (with Range) for ``data``, applying the configured fault to GETs."""
    from aiohttp import web

    headers = {"ETag": etag_of(data), "Accept-Ranges": "bytes", **(headers or {})}
    start = 0
    if request.method == "GET" and request.http_range.start is not None:
        start = request.http_range.start
    body = data[start:]
    status = 206 if start else 200
    if start:
        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
    if request.method == "HEAD":
        return web.Response(status=200, headers={**headers, "Content-Length": str(len(data))})
    mode = faults.take(request.path)
    if mode == "status":
        return web.Response(status=faults.status, text="injected failure")
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    if mode in ("stall", "drop"):
        await response.write(body[: faults.after])
        if mode == "stall":
            await asyncio.sleep(3600)
        request.transport.close()  # the "server" dies mid-body
        return response
    await response.write(body)
    await response.write_eof()
    return response


async def start_app(app) -> tuple[object, str]:
    """Run an aiohttp app on a free 127.0.0.1 port; return (runner, base URL)."""
    from aiohttp import web

    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


class AppThread:
    """An aiohttp app served from its own thread and loop, for synchronous callers (LLM)."""

    def __init__(self, app) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runner, self.url = asyncio.run_coroutine_threadsafe(start_app(app), self.loop).result(
            timeout=30
        )

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def engine_greedy_tokens(model_dir, served_model_name: str, loras: list, max_tokens: int = 8):
    """Greedy token ids per adapter (a name to resolve, or a LoRARequest), one engine for all."""
    from loraserve import LLM, SamplingParams
    from loraserve.plugins import reset_plugin_manager

    reset_plugin_manager()  # pick up the resolver variables the caller just set
    try:
        llm = LLM(
            model=str(model_dir),
            enable_lora=True,
            served_model_name=served_model_name,
            max_loras=2,
            max_lora_rank=16,
        )
        prompts = ["the quick brown fox", "select name from users"]
        params = SamplingParams(temperature=0, max_tokens=max_tokens)
        return [
            [out.outputs[0].token_ids for out in llm.generate(prompts, params, lora_request=lora)]
            for lora in loras
        ]
    finally:
        reset_plugin_manager()
