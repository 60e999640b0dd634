"""The wheel must contain every subpackage: with package-dir, a folder missing from
pyproject's ``packages`` is silently left out while an editable install still finds it."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"loraserve": "core", "loraserve.kernels": "kernels", "loraserve.plugins": "plugins"}


def folders_with_init() -> set[str]:
    found = set()
    for package, folder in PACKAGE_DIRS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    return found


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert folders_with_init() == listed


def test_no_top_level_source_folder_is_importable(tmp_path):
    """Only ``loraserve`` is installed; run outside the repo so the cwd cannot help."""
    import subprocess
    import sys

    code = "import importlib.util as u; print([n for n in ('core', 'kernels', 'plugins') if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
