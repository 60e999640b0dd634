"""Archive unpacking refuses hostile members; downloaded files are checked before use."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from loraserve.errors import LoRAAdapterError
from loraserve.resolution.download.archive import extract_adapter_archive
from loraserve.testing.adapters import lora_adapter_files, tar_bytes, tar_member, zip_bytes

FILES = {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": b"x" * 100}


def unpack(tmp_path: Path, data: bytes, name: str = "a.tar.gz", **limits) -> Path:
    archive = tmp_path / name
    archive.write_bytes(data)
    dest = tmp_path / "out"
    dest.mkdir()
    settings = dict(lora_name="sql", max_bytes=10_000, max_members=16) | limits
    extract_adapter_archive(archive, dest, **settings)
    return dest


@pytest.mark.parametrize("prefix", ["", "sql/", "./"])
def test_tar_and_zip_unpack_adapter_files(tmp_path, prefix):
    members = [(prefix + n, d) for n, d in FILES.items()] + [(prefix + "README.md", b"hi")]
    for i, (data, name) in enumerate(
        [(tar_bytes(members), "a.tgz"), (zip_bytes(members), "a.zip")]
    ):
        (tmp_path / str(i)).mkdir()
        out = unpack(tmp_path / str(i), data, name)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == FILES  # README not written


HOSTILE_TARS = {
    "absolute": [("/etc/adapter_config.json", b"{}")],
    "dotdot": [("sql/../../adapter_config.json", b"{}")],
    "symlink": [tar_member("adapter_model.safetensors", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink": [tar_member("adapter_model.safetensors", tarfile.LNKTYPE, "/etc/passwd")],
    "device": [tar_member("adapter_model.safetensors", tarfile.CHRTYPE)],
    "fifo": [tar_member("fifo", tarfile.FIFOTYPE)],
    "too many": [(f"f{i}", b"") for i in range(20)],
    "too big": [("adapter_model.safetensors", b"\0" * 20_000)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_refused_and_nothing_written(tmp_path, case):
    with pytest.raises(LoRAAdapterError):
        unpack(tmp_path, tar_bytes(list(FILES.items()) + HOSTILE_TARS[case]))
    assert list((tmp_path / "out").iterdir()) == []


def test_hostile_zip_members_refused(tmp_path):
    link = zipfile.ZipInfo("adapter_model.safetensors")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    for i, members in enumerate(
        [
            [("../adapter_config.json", b"{}")],
            [("/abs/adapter_config.json", b"{}")],
            [("C:/adapter_config.json", b"{}")],
            [("a\\..\\adapter_config.json", b"{}")],
            [(link, b"/etc/passwd")],
        ]
    ):
        (tmp_path / str(i)).mkdir()
        with pytest.raises(LoRAAdapterError):
            unpack(tmp_path / str(i), zip_bytes(members), "a.zip")


def test_zip_bomb_refused(tmp_path):
    bomb = zip_bytes([("adapter_model.safetensors", b"\0" * 5_000_000)])
    assert len(bomb) < 10_000
    with pytest.raises(LoRAAdapterError, match="limit"):
        unpack(tmp_path, bomb, "a.zip", max_bytes=1_000_000)


def test_member_larger_than_declared_refused(tmp_path):
    data = bytearray(zip_bytes([("adapter_model.safetensors", b"\0" * 50_000)]))
    # rewrite the declared size (central directory and local header) to 10 bytes
    data = bytes(data).replace((50_000).to_bytes(4, "little"), (10).to_bytes(4, "little"))
    with pytest.raises(LoRAAdapterError):
        unpack(tmp_path, data, "a.zip", max_bytes=1_000_000)


def test_not_an_archive_refused(tmp_path):
    with pytest.raises(LoRAAdapterError, match="neither zip nor tar"):
        unpack(tmp_path, b"<html>not found</html>")


def test_safetensors_checks(tmp_path):
    from loraserve.resolution.download.validation import check_safetensors

    good = lora_adapter_files("m")["adapter_model.safetensors"]
    path = tmp_path / "w.safetensors"
    path.write_bytes(good)
    assert check_safetensors(path, "sql") == 8
    header_len = int.from_bytes(good[:8], "little")
    header = good[8 : 8 + header_len]
    for bad, why in [
        (header.replace(b'"F32"', b'"F99"', 1), "invalid header"),
        (header.replace(b"lora_A", b"lora_X").replace(b"lora_B", b"lora_Y"), "no lora_A"),
    ]:
        path.write_bytes(len(bad).to_bytes(8, "little") + bad + good[8 + header_len :])
        with pytest.raises(LoRAAdapterError, match=why):
            check_safetensors(path, "sql")
