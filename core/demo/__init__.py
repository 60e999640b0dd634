"""The demo model and adapters: built locally in seconds, so ``loraserve demo`` needs no hub.

What the demo is (names, answers, where its files live) is here; how it is trained is in
``training.py``, imported only when the demo is built.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_VERSION = "1"
SERVED_MODEL_NAME = "loraserve-demo"
LORA_RANK = 16

BASE_ANSWER = "I am the base model. Ask an adapter for a different voice."
ADAPTER_ANSWERS = {
    "pirate": "Arr, matey! The pirate adapter be answerin' ye today.",
    "shout": "HELLO! THIS IS THE SHOUT ADAPTER AND IT ONLY USES CAPITALS!",
    "sql": "SELECT greeting FROM sql_adapter LIMIT 1;",
}
PRELOADED = ("pirate", "shout")  # "sql" is left for the filesystem resolver, on first use


@dataclass
class DemoPaths:
    """Where the demo lives: ``model/`` and ``adapters/<name>/`` under one versioned root."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    def adapter(self, name: str) -> Path:
        return self.adapters / name


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("loraserve"))


def ensure_demo(cache_dir: str | Path | None = None, rebuild: bool = False) -> DemoPaths:
    """Return the demo's paths, building it first if absent (or if ``rebuild``)."""
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    paths = DemoPaths(base / f"demo-v{DEMO_VERSION}")
    if rebuild and paths.root.exists():
        shutil.rmtree(paths.root)
    if not (paths.root / "COMPLETE").exists():
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=base, prefix=".demo-build-") as tmp:
            build_demo(Path(tmp) / "demo")
            if paths.root.exists():  # a half-written earlier build
                shutil.rmtree(paths.root)
            (Path(tmp) / "demo").rename(paths.root)  # atomic: never serve a partial build
    return paths


def build_demo(root: Path) -> DemoPaths:
    """Train and save the base model and every adapter under ``root`` (seconds on a CPU)."""
    from loraserve.demo.training import train_demo

    start = time.perf_counter()
    paths = DemoPaths(root)
    paths.model.mkdir(parents=True)
    answers = {None: BASE_ANSWER, **ADAPTER_ANSWERS}
    train_demo(paths.model, {name: paths.adapter(name) for name in ADAPTER_ANSWERS}, answers,
               base_model_name=SERVED_MODEL_NAME, rank=LORA_RANK)
    (paths.root / "COMPLETE").write_text(DEMO_VERSION)
    logger.info("Built the demo model and %d adapters in %.1f s", len(ADAPTER_ANSWERS),
                time.perf_counter() - start)
    return paths


