"""Settings of the shared download cache, read from the environment in one place."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse_bytes(text: str, variable: str) -> int:
    """``"1073741824"``, ``"20G"``, ``"512MiB"`` -> bytes; a clear error names the variable."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{variable}={text!r} is not a size; use bytes or e.g. 20G, 512MiB")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "").lower()])


def parse_seconds(text: str, variable: str) -> float:
    """``"5"``, ``"0.5"`` -> seconds (positive); a clear error names the variable."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{variable}={text!r} is not a positive number of seconds")
    return seconds


def default_download_dir() -> Path:
    """A folder under the user's cache dir, so nothing lands in the working directory."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("loraserve")) / "lora-adapters"


@dataclass(frozen=True)
class DownloadCacheConfig:
    """Where downloads go, how big they may get, and how long a transfer may stall."""

    download_dir: Path
    max_cache_bytes: int = 20 * 1024**3
    max_adapter_bytes: int = 4 * 1024**3
    timeout_s: float = 30.0  # connect / no-progress limit for one transfer
    retries: int = 3  # extra attempts after a transient failure (5xx, reset, stall)
    list_deadline_s: float = 5.0  # one listing of the remote, its retries included
    lease_timeout_s: float = 300.0  # a handed-out folder is kept at least this long unreleased
    max_archive_members: int = 64

    @classmethod
    def from_env(cls) -> DownloadCacheConfig:
        """Read ``VLLM_LORA_RESOLVER_*`` variables (see docs/resolvers.md)."""
        env = os.environ
        kwargs: dict = {}
        for name, field in (
            ("VLLM_LORA_RESOLVER_MAX_CACHE_BYTES", "max_cache_bytes"),
            ("VLLM_LORA_RESOLVER_MAX_ADAPTER_BYTES", "max_adapter_bytes"),
        ):
            if env.get(name):
                kwargs[field] = parse_bytes(env[name], name)
        for name, field in (
            ("VLLM_LORA_RESOLVER_TIMEOUT", "timeout_s"),
            ("VLLM_LORA_RESOLVER_LIST_DEADLINE", "list_deadline_s"),
        ):
            if env.get(name):
                kwargs[field] = parse_seconds(env[name], name)
        if env.get("VLLM_LORA_RESOLVER_RETRIES"):
            kwargs["retries"] = int(env["VLLM_LORA_RESOLVER_RETRIES"])
        download_dir = env.get("VLLM_LORA_RESOLVER_DOWNLOAD_DIR")
        path = Path(download_dir).expanduser() if download_dir else default_download_dir()
        return cls(download_dir=path.absolute(), **kwargs)
