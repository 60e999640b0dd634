"""docs/plugins.md cannot rot: its walkthrough is built, pip-installed and used as written."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loraserve.plugins import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
FILE_BLOCK = re.compile(r'^```\w+ title="(?P<path>[^"]+)"\n(?P<body>.*?)^```$', re.M | re.S)

RESOLVE_SCRIPT = """
import asyncio, sys
from loraserve.resolution.service import LoRAResolutionService

async def load(request):
    return request

request = asyncio.run(LoRAResolutionService("my-base", load).resolve("sql"))
print(request.lora_path)
"""


def walkthrough_files() -> dict[str, str]:
    return {m["path"]: m["body"] for m in FILE_BLOCK.finditer(DOC.read_text(encoding="utf-8"))}


def test_every_hook_is_documented():
    text = DOC.read_text(encoding="utf-8")
    for name, spec in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(spec, "loraserve_spec"):
            args = ", ".join(inspect.signature(spec).parameters)
            assert f"### `{name}({args})`" in text, name


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The walkthrough's files, written out and pip-installed (no deps) into a target dir."""
    root = tmp_path_factory.mktemp("walkthrough")
    files = walkthrough_files()
    assert {"pyproject.toml", "tests/test_catalog_resolver.py"} <= {
        path.split("/", 1)[1] for path in files
    }
    for path, body in files.items():
        (root / "src" / path).parent.mkdir(parents=True, exist_ok=True)
        (root / "src" / path).write_text(body, encoding="utf-8")
    site = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(root / "src" / "loraserve-catalog-resolver"),
        ],
        check=True,
        cwd=root,
        timeout=300,
    )
    assert list(site.glob("loraserve_catalog_resolver-0.1.0.dist-info/entry_points.txt"))
    return root


def env_with(site: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def test_walkthrough_tests_pass_against_the_installed_plugin(installed):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(installed / "src" / "loraserve-catalog-resolver" / "tests"),
        ],
        cwd=installed,
        env=env_with(installed / "site"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_installed_walkthrough_plugin_resolves_through_the_core(installed, tmp_path):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"sql": "/srv/adapters/sql-v3"}))
    env = env_with(
        installed / "site",
        LORA_CATALOG=str(catalog),
        VLLM_PLUGINS="lora_catalog_resolver",
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
    )
    done = subprocess.run(
        [sys.executable, "-c", RESOLVE_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "/srv/adapters/sql-v3"
