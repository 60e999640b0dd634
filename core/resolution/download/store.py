"""The on-disk layout of the download cache; only the cache writes here.

    <root>/entries/<slug>/entry.json      what is cached for one key (its mtime = last use)
    <root>/entries/<slug>/<version>/      the validated adapter folder handed to the engine
    <root>/tmp/<slug>.<random>/           downloads in progress (beside, so rename is atomic)
    <root>/locks/<slug>.lock              cross-process lock of one key (gone with its entry)

An adapter folder becomes loadable only when ``entry.json`` names it, and that file is
replaced atomically, so a crash at any point leaves either the old adapter or none. A
version folder no entry names is deleted by ``prune``, unless a caller still loads it.

Everything done for one key happens through a ``CacheSlot``: the key's place in this layout,
held under its cross-process lock (``flock``, the lock filelock's ``UnixFileLock`` takes), so
several servers sharing a cache dir never download or delete the same key at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
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

    @asynccontextmanager
    async def slot(
        self, key: str, lora_name: str, poll_s: float = 0.05
    ) -> AsyncIterator[CacheSlot]:
        """Hold ``key``'s lock (polled, so the loop never blocks and cancelling is safe) and
        yield its slot; on the way out a key left without an entry loses its lock file."""
        await asyncio.to_thread(self.ensure)
        slug = self.slug(key, lora_name)
        while (lock := try_lock(self.lock_path(slug))) is None:
            await asyncio.sleep(poll_s)
        try:
            yield CacheSlot(self, slug)
        finally:
            if not self.has_entry(slug):  # missing, refused or failed: no lock file either
                lock.unlink()
            lock.release()

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


class CacheSlot:
    """One key's place in the store, used only while its lock is held."""

    def __init__(self, store: AdapterStore, slug: str) -> None:
        self.store = store
        self.slug = slug

    def prepare(self, spare: Collection[str]) -> tuple[CacheEntry | None, list[Path]]:
        """Before a refresh: drop leftovers of interrupted downloads and unnamed versions
        (except ``spare`` paths); return the cached entry and the versions spared."""
        for child in self.store.tmp.glob(f"{self.slug}.*"):
            shutil.rmtree(child, ignore_errors=True)
        spared = self.store.prune(self.slug, spare)
        return self.store.read(self.slug), spared

    def hit(self, entry: CacheEntry) -> Path:
        """The cached folder, marked as just used."""
        self.store.touch(self.slug)
        return self.store.adapter_path(self.slug, entry)

    def new_tmp_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{self.slug}.", dir=self.store.tmp))

    def install(
        self, staged: Path, entry: CacheEntry, spare: Collection[str]
    ) -> tuple[Path, list[Path]]:
        """Rename a validated folder into place, point ``entry.json`` at it, and delete the
        version it replaced unless in ``spare``; return the folder and the versions spared."""
        path = self.store.install(self.slug, staged, entry)
        return path, self.store.prune(self.slug, spare)

    def record(self, entry: CacheEntry) -> None:
        """Name a folder kept elsewhere (an external entry)."""
        self.store.write(self.slug, entry)

    def forget(self, spare: Collection[str]) -> list[Path]:
        """The adapter is gone remotely: drop it, but not ``spare`` folders (returned)."""
        return self.store.remove(self.slug, spare)


class KeyLock:
    """An exclusive ``flock`` on a key's lock file, which its holder may delete.

    Lock files must not pile up (one per name ever asked for), so a holder whose key has no
    entry deletes the file before releasing it. That is safe because of two rules: the file
    is unlinked only while its lock is held, and a locker that wins a lock checks that the
    file it locked is still the one at the path (same inode); if it is not, it locked a file
    a previous holder already unlinked, and it tries again on the path's current file. So at
    any moment at most one process holds the lock on the file that is at the path.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def unlink(self) -> None:
        """Delete the lock file (only while holding it; lockers waiting on it try again)."""
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        os.close(self._fd)  # closing the only descriptor drops the flock


def try_lock(path: Path) -> KeyLock | None:
    """The lock if it is free right now, else ``None`` (eviction skips busy entries)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            return KeyLock(path, fd)
        os.close(fd)  # we locked an unlinked file: lock the one at the path now

