"""The on-disk layout of the download cache; only the cache writes here.

    <root>/entries/<slug>/entry.json      what is cached for one key (its mtime = last use)
    <root>/entries/<slug>/<version>/      the validated adapter folder handed to the engine
    <root>/tmp/<slug>.<random>/           downloads in progress (beside, so rename is atomic)
    <root>/locks/<slug>.lock              cross-process lock of one key (gone with its entry)

An adapter folder becomes loadable only when ``entry.json`` names it, and that file is
replaced atomically, so a crash at any point leaves either the old adapter or none. A
version folder no entry names is deleted by ``prune``, unless a caller still loads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

ENTRY_FILE = "entry.json"


@dataclass
class CacheEntry:
    """One cached adapter; ``folder`` is a version dir name, or an absolute path if external."""

    key: str
    location: str
    lora_name: str
    base_model_name: str
    version: str | None
    folder: str
    size_bytes: int
    external: bool = False  # lives in another tool's cache (the Hub's); never deleted by us
    fetched_at: float = 0.0


class AdapterStore:
    """Paths, entry files and deletion for the cache root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries = root / "entries"
        self.tmp = root / "tmp"
        self.locks = root / "locks"

    def ensure(self) -> None:
        for folder in (self.entries, self.tmp, self.locks):
            folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def slug(key: str, lora_name: str) -> str:
        """A readable, collision-free folder name for a cache key."""
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", lora_name)[:48].strip("._") or "adapter"
        return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def lock_path(self, slug: str) -> Path:
        return self.locks / f"{slug}.lock"

    def has_entry(self, slug: str) -> bool:
        """Whether ``slug`` has an entry file (its lock file must then stay)."""
        return (self.entries / slug / ENTRY_FILE).is_file()

    def read(self, slug: str) -> CacheEntry | None:
        """The entry for ``slug`` if it is complete and its folder still exists."""
        try:
            data = json.loads((self.entries / slug / ENTRY_FILE).read_text())
            entry = CacheEntry(**data)
        except (OSError, ValueError, TypeError):
            return None
        return entry if self.adapter_path(slug, entry).is_dir() else None

    def adapter_path(self, slug: str, entry: CacheEntry) -> Path:
        return Path(entry.folder) if entry.external else self.entries / slug / entry.folder

    def new_tmp_dir(self, slug: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{slug}.", dir=self.tmp))

    def install(self, slug: str, staged: Path, entry: CacheEntry) -> Path:
        """Rename a validated folder into place, then point ``entry.json`` at it atomically.

        The version it replaces stays until ``prune``.
        """
        home = self.entries / slug
        home.mkdir(parents=True, exist_ok=True)
        final = home / entry.folder
        if final.exists():  # a leftover of a crash between rename and entry write
            shutil.rmtree(final)
        os.rename(staged, final)
        self.write(slug, entry)
        return final

    def write(self, slug: str, entry: CacheEntry) -> None:
        home = self.entries / slug
        home.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".entry.", dir=home)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(entry), f)
        os.replace(tmp_name, home / ENTRY_FILE)

    def touch(self, slug: str) -> None:
        """Mark as recently used (the LRU order is ``entry.json``'s mtime)."""
        try:
            os.utime(self.entries / slug / ENTRY_FILE)
        except OSError:
            pass

    def prune(self, slug: str, spare: Collection[str] = ()) -> list[Path]:
        """Delete the version folders ``entry.json`` does not name, except those in ``spare``
        (paths); return the spared ones, still to delete later."""
        home = self.entries / slug
        if not home.is_dir():
            return []
        entry = self.read(slug)
        spared = []
        for child in home.iterdir():
            if child.is_dir() and (entry is None or child.name != entry.folder):
                if str(child) in spare:
                    spared.append(child)
                else:
                    shutil.rmtree(child, ignore_errors=True)
            elif child.name.startswith(".entry."):
                child.unlink(missing_ok=True)
        if entry is None and not spared:
            shutil.rmtree(home, ignore_errors=True)
        return spared

    def remove(self, slug: str, spare: Collection[str] = ()) -> list[Path]:
        """Forget first (entry.json), then delete, so a half-deleted folder is never named;
        folders in ``spare`` stay (and are returned) until a later ``prune``."""
        (self.entries / slug / ENTRY_FILE).unlink(missing_ok=True)
        return self.prune(slug, spare)

    def clear_tmp(self, slug: str) -> None:
        """Drop leftovers of interrupted downloads of ``slug`` (call with its lock held)."""
        for child in self.tmp.glob(f"{slug}.*"):
            shutil.rmtree(child, ignore_errors=True)

    def lru_entries(self) -> list[tuple[float, str, CacheEntry]]:
        """(last use, slug, entry) for every complete entry, oldest first."""
        found = []
        for home in self.entries.iterdir() if self.entries.is_dir() else ():
            try:
                mtime = (home / ENTRY_FILE).stat().st_mtime
            except OSError:
                continue
            entry = self.read(home.name)
            if entry is not None:
                found.append((mtime, home.name, entry))
        found.sort(key=lambda item: item[0])
        return found
