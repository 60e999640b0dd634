"""Start a real server on 127.0.0.1 in a background thread (shared by the server tests)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BASE = "base"


@dataclass
class RunningServer:
    """A started server: its URL, engine and loop (to run coroutines on the server's loop)."""

    url: str
    engine: object
    loop: asyncio.AbstractEventLoop

    def call(self, coro):  # noqa: ANN001, ANN201
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)


def start_in_thread(engine_config, server_config) -> tuple[RunningServer, Callable[[], None]]:  # noqa: ANN001
    """Start ``build_app`` on a fresh loop in a daemon thread; returns (server, stop)."""
    from loraserve.engine.async_engine import AsyncLLMEngine
    from loraserve.entrypoints.openai.api_server import bound_port, start_server

    engine = AsyncLLMEngine(engine_config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = asyncio.run_coroutine_threadsafe(start_server(engine, server_config), loop).result(60)
    server = RunningServer(f"http://127.0.0.1:{bound_port(runner)}", engine, loop)

    def stop() -> None:
        server.call(runner.cleanup())
        server.call(engine.shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return server, stop


@contextmanager
def base_model_server(model_dir: Path, **server_options) -> Iterator[RunningServer]:  # noqa: ANN003
    """The base model alone (served as ``BASE``) on a server with these ``ServerConfig`` options."""
    from loraserve.config import EngineConfig
    from loraserve.entrypoints.openai.server_config import ServerConfig

    running, stop = start_in_thread(EngineConfig(model=str(model_dir), served_model_name=BASE),
                                    ServerConfig(port=0, **server_options))
    try:
        yield running
    finally:
        stop()


def http(method: str, url: str, body: dict | None = None, timeout: float = 30.0,
         headers: dict | None = None) -> tuple[int, dict, str]:
    """One plain HTTP call (for what the openai client does not expose): status, headers, text."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def post_json(url: str, body: dict, timeout: float = 30.0) -> tuple[int, str]:
    status, _, text = http("POST", url, body, timeout)
    return status, text


def stream_lines(url: str, body: dict, stop_after: int | None = None) -> tuple[dict, list[str]]:
    """POST and read SSE lines; with ``stop_after`` hang up after that many data lines."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", parts.path, body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        lines: list[str] = []
        while True:
            raw = response.readline()
            if not raw:
                break
            line = raw.decode().strip()
            if line:
                lines.append(line)
                if stop_after is not None and len(lines) >= stop_after:
                    break
        return dict(response.headers), lines
    finally:
        conn.close()


def loraserve_cmd() -> list[str]:
    """The installed ``loraserve`` console script (or the module, if the script is missing)."""
    exe = shutil.which("loraserve", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "loraserve.entrypoints.cli"]


def clean_env() -> dict[str, str]:
    """This environment without VLLM_* settings, and no plugins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env["VLLM_PLUGINS"] = ""
    return env


def wait_until_ready(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    """The URL a ``loraserve`` subprocess prints once it serves; fails if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"loraserve exited: {proc.stderr.read()}")
        match = re.search(r"ready on (http://\S+)", line)
        if match:
            return match.group(1)
    raise AssertionError("loraserve did not become ready")
