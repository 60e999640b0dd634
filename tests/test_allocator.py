"""The host allocator: the command line's tcmalloc relaunch, and what a running process logs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from loraserve.allocator import ALLOCATOR_ENV, preloaded_allocator

# a stand-in for tcmalloc that every glibc system has and that changes nothing when preloaded
STAND_IN = "libm.so.6"


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", ALLOCATOR_ENV)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env={**environ, **(env or {})},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_preloaded_allocator_names_the_fast_one_in_ld_preload() -> None:
    assert preloaded_allocator({"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"}) == "tcmalloc"
    assert preloaded_allocator({"LD_PRELOAD": "/x/libfoo.so:/y/libjemalloc.so.2"}) == "jemalloc"
    assert preloaded_allocator({"LD_PRELOAD": "/x/libfoo.so"}) is None
    assert preloaded_allocator({}) is None


RELAUNCH = f"""
    import os, sys
    import loraserve.allocator as allocator
    if "{STAND_IN}" in os.environ.get("LD_PRELOAD", ""):  # the second run
        print("relaunched with", os.environ["LD_PRELOAD"], sys.argv[1:]); raise SystemExit
    allocator.find_tcmalloc = lambda: {{"found": "{STAND_IN}", "missing": None}}[sys.argv[1]]
    allocator.preloaded_allocator = lambda: None  # the stand-in is not a fast allocator by name
    allocator.relaunch_with_tcmalloc()
    print("not relaunched")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD")
def test_relaunch_runs_the_same_command_line_again_with_the_library_preloaded() -> None:
    out = run_python(RELAUNCH, "found", "--flag", "value", env={"LD_PRELOAD": ""})
    assert out == f"relaunched with {STAND_IN} ['found', '--flag', 'value']"


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD")
def test_relaunch_keeps_what_ld_preload_held() -> None:
    out = run_python(RELAUNCH, "found", env={"LD_PRELOAD": "libdl.so.2"})
    assert out == f"relaunched with {STAND_IN}:libdl.so.2 ['found']"


def test_no_relaunch_without_tcmalloc_or_when_opted_out() -> None:
    assert run_python(RELAUNCH, "missing") == "not relaunched"
    assert run_python(RELAUNCH, "found", env={ALLOCATOR_ENV: "system"}) == "not relaunched"


def test_the_command_line_called_from_python_never_relaunches(monkeypatch) -> None:  # noqa: ANN001
    import loraserve.entrypoints.cli as cli

    def fail() -> None:
        raise AssertionError("relaunched")

    monkeypatch.setattr(cli, "relaunch_with_tcmalloc", fail)
    assert cli.main(["serve", "/m", "--max-loras", "4", "--max-cpu-loras", "2"]) == 2


def test_the_log_names_the_allocator_and_how_to_preload_tcmalloc() -> None:
    code = "from loraserve.allocator import log_host_allocator as log; print(log())"
    out = run_python(code, env={"LD_PRELOAD": STAND_IN + ":/nonexistent/libtcmalloc.so"})
    assert out == "tcmalloc (preloaded)"
    assert run_python(code).startswith("the system's malloc; LD_PRELOAD=libtcmalloc")
