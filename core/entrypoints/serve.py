"""Run the HTTP server until interrupted: build the engine, load adapters, listen, shut down.

Start-up errors (bad config, missing model, a ``--lora-modules`` adapter that will not load)
end the process with a one-line message and exit status 1, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from loraserve.entrypoints.cpu_threads import front_end_threads, keep_cores_for_front_end
from loraserve.entrypoints.openai.server_config import ServerConfig
from loraserve.errors import LoRAServeError, PluginError

logger = logging.getLogger("loraserve.serve")


def base_url(config: ServerConfig, port: int) -> str:
    host = "127.0.0.1" if config.host in ("0.0.0.0", "", "::") else config.host
    return f"http://{host}:{port}"


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


def serve(engine_config, server_config: ServerConfig,  # noqa: ANN001 - EngineConfig
          on_ready: Callable[[str], None] | None = None) -> int:
    """Blocking entry point of ``loraserve serve`` / ``demo``; returns the exit status."""
    try:
        threads = front_end_threads()  # read before the model loads: a bad value fails fast
    except ValueError as exc:
        return _fail(str(exc))
    try:
        from loraserve.engine.async_engine import AsyncLLMEngine

        engine = AsyncLLMEngine(engine_config)
        keep_cores_for_front_end(engine.engine.device, threads)
    except PluginError as exc:  # a wrong VLLM_PLUGINS, caught before the model loads
        return _fail(str(exc))
    except (LoRAServeError, OSError, ValueError) as exc:
        return _fail(f"cannot load model '{engine_config.model}': {exc}")
    try:
        return asyncio.run(_serve(engine, server_config, on_ready))
    except LoRAServeError as exc:
        return _fail(str(exc))
    except OSError as exc:  # most often: the port is taken
        return _fail(f"cannot listen on {server_config.host}:{server_config.port}: {exc}")


async def _serve(engine, config: ServerConfig,  # noqa: ANN001 - AsyncLLMEngine
                 on_ready: Callable[[str], None] | None) -> int:
    from loraserve.entrypoints.openai.api_server import bound_port, start_server

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not on this platform / thread
            pass
    try:
        runner = await start_server(engine, config)
    except BaseException:
        await engine.shutdown()
        raise
    url = base_url(config, bound_port(runner))
    logger.info("Serving %r on %s", engine.served_model_name, url)
    print(f"loraserve is ready on {url} (Ctrl+C to stop)", flush=True)
    if on_ready is not None:
        on_ready(url)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await engine.shutdown()
    return 0
