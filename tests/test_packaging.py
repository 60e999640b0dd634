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
    """Only ``loraserve`` is installed from this repo; run outside it so the cwd cannot help.

    Another distribution may own one of those names (transformers pulls in Hugging Face's
    ``kernels``): only a module found in this repository's folders is a leak.
    """
    import json
    import subprocess
    import sys

    code = ("import importlib.util as u, json; "
            "print(json.dumps([s.origin for n in ('core', 'kernels', 'plugins') "
            "if (s := u.find_spec(n)) and s.origin]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ours = [ROOT / folder for folder in PACKAGE_DIRS.values()]
    found = [Path(origin).resolve() for origin in json.loads(out.stdout)]
    leaked = [path for path in found if any(path.is_relative_to(folder) for folder in ours)]
    assert leaked == []


def test_version_is_defined_once_and_reported(tmp_path):
    import subprocess
    import sys

    import loraserve

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
    out = subprocess.run([sys.executable, "-m", "loraserve", "--version"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"loraserve {loraserve.__version__}"


def test_every_distribution_ships_license_and_py_typed_and_pins_loraserve():
    dists = [ROOT, *sorted((ROOT / "resolvers").iterdir())]
    for dist in (d for d in dists if (d / "pyproject.toml").is_file()):
        config = tomllib.loads((dist / "pyproject.toml").read_text())["project"]
        assert config["license"] == "Apache-2.0" and (dist / "LICENSE").is_file(), dist
        assert "Apache License" in (dist / "LICENSE").read_text()
        packages = [p.parent for p in dist.glob("*/__init__.py")] if dist != ROOT else [
            ROOT / folder for folder in PACKAGE_DIRS.values()]
        assert packages and all((p / "py.typed").is_file() for p in packages), dist
        if dist != ROOT:
            assert "loraserve>=0.1,<0.2" in config["dependencies"], dist
