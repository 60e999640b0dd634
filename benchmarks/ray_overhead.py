"""What Ray Serve adds to a request: one aiohttp server vs the same engine behind Ray Serve.

Both serve the tiny built-in model on this machine: ``loraserve serve`` as a subprocess, and
``build_app`` with one replica in this process's Ray cluster (``ray.init(num_cpus=2)``). Each
round sends ``--requests`` sequential requests to one, then the other (interleaved rounds,
best round of each kept): a 1-token completion (the fixed cost per request) and a streamed
32-token completion (the cost per SSE chunk on top). Prints medians in milliseconds.

    python benchmarks/ray_overhead.py [--rounds 5 --requests 40]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"nothing healthy on port {port}")


def timed(port: int, model: str, stream: bool, n: int) -> float:
    """Median seconds of ``n`` sequential requests over one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"model": model, "prompt": "hello there", "temperature": 0,
                       "max_tokens": 32 if stream else 1, "ignore_eos": True, "stream": stream})
    times = []
    for _ in range(n):
        start = time.perf_counter()
        connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
        times.append(time.perf_counter() - start)
    connection.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    from ray import serve

    from loraserve.config import EngineConfig
    from loraserve.distributed.ray_serve import RayOptions, build_app
    from loraserve.entrypoints.openai.server_config import ServerConfig
    from loraserve.testing import make_tiny_model

    root = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    model = str(make_tiny_model(root / "model", seed=3))
    single_port, ray_port = free_port(), free_port()
    single = subprocess.Popen(
        [sys.executable, "-m", "loraserve.entrypoints.cli", "serve", model, "--port",
         str(single_port), "--disable-log-stats", "--disable-uvicorn-access-log"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(root / "ray"),
             log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": ray_port})
        serve.run(build_app(engine_config=EngineConfig(model=model, disable_log_stats=True),
                            server_config=ServerConfig(),
                            options=RayOptions(num_replicas=1, state_dir=str(root / "state"))),
                  name="loraserve", route_prefix="/")
        wait_healthy(single_port)
        best = {}
        for _ in range(args.rounds):
            for name, port in (("single server", single_port), ("Ray Serve", ray_port)):
                for stream in (False, True):
                    t = timed(port, model, stream, args.requests)
                    key = (name, stream)
                    best[key] = min(best.get(key, t), t)
        print(f"{'':<15}{'1 token':>10}{'32 streamed':>13}   (median ms, best of "
              f"{args.rounds} rounds x {args.requests} requests)")
        for name in ("single server", "Ray Serve"):
            print(f"{name:<15}{best[name, False] * 1e3:>10.1f}{best[name, True] * 1e3:>13.1f}")
        extra = best["Ray Serve", False] - best["single server", False]
        extra_stream = best["Ray Serve", True] - best["single server", True]
        print(f"Ray adds {extra * 1e3:.1f} ms per request, {extra_stream * 1e3:.1f} ms per "
              "32-token stream")
    finally:
        serve.shutdown()
        ray.shutdown()
        single.terminate()
        single.wait()


if __name__ == "__main__":
    main()
