"""The small interface a remote resolver implements; the cache does everything else.

A source lists an adapter's files (name, size, a version tag such as an ETag) and fetches
one file to a local path. Sources that keep their own content-addressed cache (the Hub)
implement ``MirroredAdapterSource`` instead and hand back a local directory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from loraserve.lora.peft_config import CONFIG_FILE as ADAPTER_CONFIG
from loraserve.lora.peft_config import SAFETENSORS_FILE as ADAPTER_WEIGHTS

ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")

ProgressCallback = Callable[[int], None]  # called with the number of bytes about to be written


class TransientSourceError(ConnectionError):
    """A failure worth retrying (5xx, reset connection, stalled transfer)."""


class SourceUnreachableError(TransientSourceError):
    """No connection could be made (refused, unknown host, connect timeout).

    Known at once, so a listing is not retried: the cache serves its copy straight away,
    or answers 503 for an adapter it never fetched.
    """


def is_archive_name(name: str) -> bool:
    """True for the archive formats the cache can unpack safely."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class RemoteFile:
    """One remote file: ``name`` is the local file name (adapter file or archive name)."""

    name: str
    size: int | None  # bytes, when the remote says
    tag: str | None  # ETag / last-modified / blob id: changes when the content does
    remote_path: str = ""  # whatever the source needs to fetch it (key, URL, repo path)


@dataclass(frozen=True)
class RemoteListing:
    """What is there now: one archive, or the adapter files themselves."""

    files: tuple[RemoteFile, ...]
    archive: bool = False
    extra: dict = field(default_factory=dict, compare=False)  # source-private (e.g. commit sha)

    @property
    def total_size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def version(self) -> str | None:
        """A digest of every file's tag; ``None`` when any tag is unknown (never trust it)."""
        if any(f.tag is None for f in self.files):
            return None
        digest = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.name):
            digest.update(f"{f.name}\0{f.size}\0{f.tag}\n".encode())
        return digest.hexdigest()[:32]


@runtime_checkable
class RemoteAdapterSource(Protocol):
    """A remote location holding one adapter (a prefix, a URL directory, an archive)."""

    location: str  # shown in logs and errors, part of the cache key

    async def list_files(self) -> RemoteListing | None:
        """The adapter's files now, or ``None`` when nothing is there (try the next resolver)."""
        ...

    async def fetch(self, file: RemoteFile, dest: Path, progress: ProgressCallback) -> None:
        """Write ``file`` to ``dest``; raise ``TransientSourceError`` to retry.

        Call ``progress(n)`` before writing each ``n``-byte chunk: it raises once the file
        passes its listed size or the adapter limit, and nothing more may be written.
        """
        ...


@runtime_checkable
class MirroredAdapterSource(Protocol):
    """A source with its own download cache: it materialises the listing into a local dir."""

    location: str

    async def list_files(self) -> RemoteListing | None:
        """As for ``RemoteAdapterSource``."""
        ...

    async def materialize(self, listing: RemoteListing, progress: ProgressCallback) -> Path:
        """Make the listed files present locally (reusing its cache) and return their folder.

        Call ``progress(n)`` before writing ``n`` new bytes: it raises once the download
        passes the listed size or the adapter limit, and the source must then stop.
        """
        ...
