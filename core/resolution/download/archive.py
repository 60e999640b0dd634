"""Unpack a downloaded adapter archive (.tar, .tar.gz, .tgz, .zip) without trusting it.

Every member is checked before a byte is written: absolute names, ``..``, links, devices,
too many members or too many (declared or actual) bytes refuse the whole archive. Only the
adapter files are written, under names we choose, so nothing can land outside ``dest``.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from loraserve.errors import LoRAAdapterError
from loraserve.resolution.download.source import ADAPTER_FILES

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class _Member:
    name: str
    size: int
    kind: str  # "file", "dir" or a refused kind ("symlink", "hardlink", "device", ...)
    handle: object  # TarInfo or ZipInfo


def _unsafe_name(name: str) -> bool:
    """Absolute, drive-qualified, backslashed or ``..`` names could escape the target."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\0" in name:
        return True
    if len(name) > 1 and name[1] == ":":
        return True
    return any(part == ".." for part in PurePosixPath(name).parts)


def _tar_members(tf: tarfile.TarFile, limit: int, lora_name: str) -> Iterator[_Member]:
    for count, info in enumerate(tf, start=1):
        if count > limit:
            raise LoRAAdapterError(lora_name, f"the archive has more than {limit} members")
        if info.isreg():
            kind = "file"
        elif info.isdir():
            kind = "dir"
        elif info.issym():
            kind = "symlink"
        elif info.islnk():
            kind = "hardlink"
        elif info.isdev() or info.isfifo():
            kind = "device"
        else:
            kind = "special"
        yield _Member(info.name, info.size, kind, info)


def _zip_members(zf: zipfile.ZipFile, limit: int, lora_name: str) -> Iterator[_Member]:
    infos = zf.infolist()
    if len(infos) > limit:
        raise LoRAAdapterError(lora_name, f"the archive has more than {limit} members")
    for info in infos:
        file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool set none
        if stat.S_ISLNK(file_type):
            kind = "symlink"
        elif info.is_dir():
            kind = "dir"
        elif file_type not in (0, stat.S_IFREG):
            kind = "device"
        else:
            kind = "file"
        yield _Member(info.filename, info.file_size, kind, info)


@contextmanager
def _open_archive(path: Path, lora_name: str):
    """Yield (members, open_member) for a tar or zip, chosen by content, not by name."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            yield zf, "zip"
        return
    try:
        tf = tarfile.open(path, mode="r:*")
    except tarfile.TarError as exc:
        raise LoRAAdapterError(lora_name, f"the archive is neither zip nor tar: {exc}") from None
    with tf:
        yield tf, "tar"


def extract_adapter_archive(
    archive: Path, dest: Path, *, lora_name: str, max_bytes: int, max_members: int
) -> list[str]:
    """Write the adapter files found in ``archive`` into ``dest``; return their names."""
    try:
        with _open_archive(archive, lora_name) as (handle, kind):
            members = list(
                _zip_members(handle, max_members, lora_name)
                if kind == "zip"
                else _tar_members(handle, max_members, lora_name)
            )
            chosen = _check_members(members, lora_name, max_bytes)
            opener = handle.open if kind == "zip" else handle.extractfile
            written = 0
            for basename, member in chosen.items():
                budget = max_bytes - written
                written += _copy_bounded(
                    opener(member.handle), dest / basename, member, budget, lora_name
                )
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise LoRAAdapterError(lora_name, f"the archive is corrupt: {exc}") from None
    return sorted(chosen)


def _check_members(members: list[_Member], lora_name: str, max_bytes: int) -> dict[str, _Member]:
    """Refuse hostile members; pick adapter files at the root or under one top folder."""
    declared = 0
    for m in members:
        if _unsafe_name(m.name):
            raise LoRAAdapterError(
                lora_name, f"archive member {m.name!r} would land outside the adapter folder"
            )
        if m.kind not in ("file", "dir"):
            raise LoRAAdapterError(lora_name, f"archive member {m.name!r} is a {m.kind}")
        declared += m.size if m.kind == "file" else 0
    if declared > max_bytes:
        raise LoRAAdapterError(
            lora_name, f"the archive unpacks to {declared} bytes, over the {max_bytes}-byte limit"
        )
    files = [m for m in members if m.kind == "file"]
    tops = {PurePosixPath(m.name).parts[0] for m in files if len(PurePosixPath(m.name).parts) > 1}
    prefix = (
        tops.pop()
        if len(tops) == 1 and all(len(PurePosixPath(m.name).parts) > 1 for m in files)
        else None
    )
    chosen: dict[str, _Member] = {}
    for m in files:
        parts = PurePosixPath(m.name).parts
        rel = parts[1:] if prefix is not None else parts
        if len(rel) == 1 and rel[0] in ADAPTER_FILES:
            if rel[0] in chosen:
                raise LoRAAdapterError(lora_name, f"the archive holds {rel[0]} twice")
            chosen[rel[0]] = m
    return chosen


def _copy_bounded(
    src: IO[bytes] | None, dest: Path, member: _Member, budget: int, lora_name: str
) -> int:
    """Copy one member, refusing it if it yields more than declared or than the budget."""
    if src is None:
        raise LoRAAdapterError(lora_name, f"archive member {member.name!r} cannot be read")
    limit = min(member.size, budget)
    copied = 0
    with src, dest.open("xb") as out:
        while chunk := src.read(CHUNK):
            copied += len(chunk)
            if copied > limit:
                raise LoRAAdapterError(
                    lora_name, f"archive member {member.name!r} is larger than it declares"
                )
            out.write(chunk)
    return copied
