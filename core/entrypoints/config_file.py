"""``loraserve serve --config FILE``: vLLM's YAML config file, turned into the flags it stands
for. Keys are flag names (``max-num-seqs`` or ``max_num_seqs``), ``model`` names MODEL;
a flag also given on the command line keeps the command line's value."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def with_config_file(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` (a ``serve`` command's flags, without ``serve``) with the config file's flags
    put first, leaving out those the command line gives itself."""
    argv = list(argv)
    path = _config_path(argv)
    if path is None:
        return argv
    options = _options_by_flag(parser)
    given = {options[flag].dest for flag in (a.split("=", 1)[0] for a in argv) if flag in options}
    tokens: list[str] = []
    for key, value in _read(parser, path).items():
        flag = "--" + str(key).replace("_", "-")
        action = options.get(flag)
        if action is None:
            parser.error(f"--config {path}: unknown key {key!r} (keys are flag names such as "
                         "'max-num-seqs')")
        if action.dest not in given:
            tokens += _flag_tokens(flag, action, value, options)
    return tokens + argv


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _options_by_flag(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def _read(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as file:
            config = yaml.safe_load(file)
    except OSError as exc:
        parser.error(f"--config {path}: {exc.strerror or exc}")
    except yaml.YAMLError as exc:
        parser.error(f"--config {path}: not valid YAML ({exc})")
    if config is None:
        return {}
    if not isinstance(config, dict):
        parser.error(f"--config {path}: expected a mapping of flag names to values")
    return config


def _flag_tokens(flag: str, action: argparse.Action, value: Any,
                 options: dict[str, argparse.Action]) -> list[str]:
    """The command-line words for one key, as vLLM writes them: true is the bare flag, false
    its ``--no-`` form (or nothing), a list one word per item, a mapping JSON."""
    if isinstance(value, bool) and action.nargs == 0:
        if value:
            return [flag]
        negative = "--no-" + flag[2:]
        return [negative] if negative in options else []
    if isinstance(value, list) and action.nargs not in (None, "?"):
        return [flag, *(json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in value)]
    if isinstance(value, (dict, list)):
        return [flag, json.dumps(value)]
    if value is None:
        return []
    return [flag, str(value).lower() if isinstance(value, bool) else str(value)]
