"""The folder replicas share: adapters loaded through the API, and what each replica reports.

``adapters/<name>.json`` holds one adapter loaded (``path`` set) or unloaded (``path``
null) through ``/v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` or ``--lora-modules``;
every replica applies these entries before it serves a request, so a new or restarted replica
agrees with the others (vLLM RFC #12174's shared registry). ``replicas/<id>.json`` is each
replica's latest report (its adapters and metrics), which the ingress merges for
``/v1/models`` and ``/metrics``. Files are replaced atomically; on several nodes the folder
must be a shared mount.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

REPORT_FRESH_S = 10.0  # a replica report older than this is a replica that is gone


@dataclass(frozen=True)
class ReplicaReport:
    replica: str
    adapters: tuple[tuple[str, str], ...]  # (name, path) registered there
    metrics: str  # its Prometheus text exposition
    time: float
    extra: dict = field(default_factory=dict)


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(payload, file)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # removed meanwhile, or not ours
        return None


class AdapterRegistry:
    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._adapters = self.folder / "adapters"
        self._replicas = self.folder / "replicas"

    # ---- adapters loaded or unloaded through the API -------------------------------------
    def record(self, name: str, path: str | None) -> None:
        """``path`` None records an unload: replicas drop the name however they got it."""
        _write_json(self._adapters / f"{quote(name, safe='')}.json",
                    {"name": name, "path": path, "time": time.time()})

    def entries(self) -> dict[str, tuple[str | None, float]]:
        """name -> (path, None once unloaded; when it was written) of every adapter the API
        loaded or unloaded."""
        found = {}
        for file in sorted(self._adapters.glob("*.json")):
            entry = _read_json(file)
            if entry is not None and isinstance(entry.get("name"), str):
                found[entry["name"]] = (entry.get("path"), float(entry.get("time", 0)))
        return found

    def version(self) -> int:
        """Changes whenever an entry is written (the folder's mtime): a cheap "anything new?"."""
        try:
            return self._adapters.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    # ---- replica reports ------------------------------------------------------------------
    def report(self, replica: str, adapters: list[tuple[str, str]], metrics: str,
               extra: dict | None = None) -> None:
        """``extra``: counters for operators and tests (loads, unloads, running, waiting)."""
        _write_json(self._replicas / f"{quote(replica, safe='')}.json",
                    {"replica": replica, "adapters": adapters, "metrics": metrics,
                     "time": time.time(), "extra": extra or {}})

    def forget_replica(self, replica: str) -> None:
        (self._replicas / f"{quote(replica, safe='')}.json").unlink(missing_ok=True)

    def reports(self, fresh_s: float = REPORT_FRESH_S) -> list[ReplicaReport]:
        """The reports of replicas alive now (written in the last ``fresh_s`` seconds)."""
        now, found = time.time(), []
        for file in sorted(self._replicas.glob("*.json")):
            entry = _read_json(file)
            if entry is None or now - entry.get("time", 0) > fresh_s:
                continue
            adapters = tuple((str(n), str(p)) for n, p in entry.get("adapters", []))
            found.append(ReplicaReport(entry["replica"], adapters, entry.get("metrics", ""),
                                       entry["time"], entry.get("extra", {})))
        return found
