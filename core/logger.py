"""Logging set up from vLLM's environment variables, in one place (vLLM's ``vllm/logger.py``).

``VLLM_CONFIGURE_LOGGING`` (default 1; 0 leaves logging alone), ``VLLM_LOGGING_LEVEL`` (default
INFO) and ``VLLM_LOGGING_CONFIG_PATH`` (a JSON ``logging.config.dictConfig`` file used instead
of the default set-up). The command line owns its process and configures the root logger, so
plugins' and the HTTP server's lines show too; ``LLM`` configures only the ``loraserve`` logger,
as vLLM configures ``vllm`` when imported, and only where the application configured none.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONFIGURE_ENV = "VLLM_CONFIGURE_LOGGING"
LEVEL_ENV = "VLLM_LOGGING_LEVEL"
CONFIG_PATH_ENV = "VLLM_LOGGING_CONFIG_PATH"
FORMAT = "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"  # vLLM's
DATE_FORMAT = "%m-%d %H:%M:%S"


@dataclass(frozen=True)
class LoggingConfig:
    configure: bool = True
    level: str = "INFO"
    config_path: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LoggingConfig:
        env = os.environ if environ is None else environ
        raw = env.get(CONFIGURE_ENV, "1").strip()
        try:
            configure = bool(int(raw))  # vLLM's parse: 0 or 1
        except ValueError:
            raise ValueError(f"{CONFIGURE_ENV} must be 0 or 1, got {raw!r}") from None
        level = env.get(LEVEL_ENV, "INFO").strip().upper() or "INFO"
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError(f"{LEVEL_ENV} must be a logging level (DEBUG, INFO, WARNING, ERROR, "
                             f"CRITICAL), got {level!r}")
        path = env.get(CONFIG_PATH_ENV) or None
        if path and not configure:
            raise ValueError(
                f"{CONFIGURE_ENV} evaluated to false, but {CONFIG_PATH_ENV} was given. "
                f"{CONFIG_PATH_ENV} implies {CONFIGURE_ENV}. Please enable {CONFIGURE_ENV} "
                f"or unset {CONFIG_PATH_ENV}.")
        return cls(configure, level, path)


def configure_logging(logger_name: str = "", level: str | None = None,
                      environ: Mapping[str, str] | None = None) -> None:
    """Apply the environment's logging settings to ``logger_name`` ("" is the root logger);
    ``level`` (a command-line flag) wins over ``VLLM_LOGGING_LEVEL``.

    A dictConfig file is applied as written. Otherwise a logger that already has handlers, or
    whose records already reach one (a root logger configured by the application, pytest's),
    is left alone: the default set-up only fills in what nobody configured.
    """
    settings = LoggingConfig.from_env(environ)
    if not settings.configure:
        return
    if settings.config_path:
        logging.config.dictConfig(_read_config(settings.config_path))
        return
    logger = logging.getLogger(logger_name)
    root = logging.getLogger()
    if logger.handlers or root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    logger.addHandler(handler)
    logger.setLevel((level or settings.level).upper())
    if logger is not root:
        logger.propagate = False  # as vLLM's own logger: no second copy through the root


def _read_config(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"Could not load logging config. File does not exist: {path}")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"Invalid logging config {path}: not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"Invalid logging config. Expected dict, got {type(config).__name__}.")
    config.setdefault("version", 1)
    # loraserve's loggers exist before the file is applied (vLLM applies it on import, before
    # they do): unless the file says otherwise, keep them
    config.setdefault("disable_existing_loggers", False)
    return config
