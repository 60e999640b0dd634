"""How the resolver path reads: the modules an S3 resolution passes through, in order.

One unknown adapter name is resolved by ``AsyncLLMEngine.resolve_model`` through the S3
resolver, against a real S3 (moto's server on loopback), from an empty download cache, and
every loraserve function called on the way is recorded the first time it runs, on any thread
(a function is read once however often it is called, as when following the path by hand).
Printed: the folders in the order the path first enters them, the number of control
transfers (consecutive functions in different modules), how many of those go back into a
module already visited, and that count per module.

    python benchmarks/resolution_trace.py [--sequence]   (--sequence: every module entered)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

from loraserve.config import EngineConfig
from loraserve.engine.async_engine import AsyncLLMEngine
from loraserve.plugins import get_plugin_manager
from loraserve.testing import make_adapter, make_tiny_model

BUCKET, SERVED = "adapters", "trace-base"
OURS = ("loraserve", "loraserve_s3_resolver")


class FirstCalls:
    """A profile hook recording the module of each loraserve function's first call."""

    def __init__(self) -> None:
        self.seen: set[object] = set()
        self.modules: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, frame, event, _arg):  # noqa: ANN001
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(OURS):
            return
        with self.lock:
            if frame.f_code not in self.seen:
                self.seen.add(frame.f_code)
                self.modules.append(module)


def summarize(modules: list[str]) -> dict[str, object]:
    transfers = reentries = 0
    visited = [modules[0]]
    for before, after in zip(modules, modules[1:]):
        if before == after:
            continue
        transfers += 1
        reentries += after in visited
        if after not in visited:
            visited.append(after)
    folders: list[str] = []
    for module in visited:
        if not module.startswith("loraserve."):  # a resolver distribution: its package
            folder = module.split(".")[0]
        else:  # loraserve.resolution.download.cache -> loraserve.resolution.download
            folder = module.rsplit(".", 1)[0] if module.count(".") > 1 else module
        if folder not in folders:
            folders.append(folder)
    return {
        "modules": len(visited),
        "transfers": transfers,
        "reentries": reentries,
        "reentries_per_module": round(reentries / len(visited), 2),
        "folders": folders,
    }


async def resolve_traced(model_dir: Path) -> FirstCalls:
    engine = AsyncLLMEngine(
        EngineConfig(model=str(model_dir), served_model_name=SERVED, enable_lora=True,
                     max_loras=2, max_lora_rank=8, allow_runtime_lora_updating=True)
    )
    calls = FirstCalls()
    threading.setprofile(calls)
    sys.setprofile(calls)
    try:
        await engine.resolve_model("a1", allow_resolvers=True)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    await engine.shutdown()
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sequence", action="store_true", help="print every module entered")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loraserve-trace-"))
    model_dir = make_tiny_model(work / "model", "llama")
    adapter_dir = make_adapter(model_dir, work / "a1", rank=8, seed=1, base_model_name=SERVED)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint, VLLM_PLUGINS="lora_s3_resolver",
        VLLM_LORA_RESOLVER_S3_URI=f"s3://{BUCKET}/{{lora_name}}",
        VLLM_LORA_RESOLVER_DOWNLOAD_DIR=str(work / "downloads"),
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="1",
    )
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    for file in adapter_dir.iterdir():
        s3.upload_file(str(file), BUCKET, f"a1/{file.name}")
    get_plugin_manager().resolvers()  # plugin discovery and import are not the path traced
    try:
        calls = asyncio.run(resolve_traced(model_dir))
    finally:
        server.stop()
    if args.sequence:
        print("\n".join(m for i, m in enumerate(calls.modules) if i == 0 or calls.modules[i - 1] != m))
    summary = summarize(calls.modules)
    print(" -> ".join(summary.pop("folders")))
    for key, value in summary.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
