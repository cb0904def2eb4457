"""Reliability, third pass (issue 21): inputs and outputs a hostile tester broke.

Archives read to the end of their compressed stream, a full disk inside torch.save, a read-only
output folder, a netrc error on another host's line, duplicate YAML keys, `lc prepare --verify`.
"""

from __future__ import annotations

import errno
import io
import os
import tarfile
from pathlib import Path

import pytest

from lc.data.errors import CorruptFileError, NoSpaceError
from lc.data.extract import safe_extract


def _tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


MEMBERS = {f"set/file{i}.txt": bytes([65 + i]) * 1500 for i in range(4)}


# --- 5: a .tgz is read to the end of its gzip stream --------------------------------------------
@pytest.mark.parametrize("damage", ["no_trailer", "bad_crc"])
def test_tgz_without_its_gzip_trailer_is_refused(tmp_path, damage):
    """Every member is complete, but the gzip trailer (CRC-32 and length) is missing or wrong."""
    good = _tgz(MEMBERS)
    bad = good[:-8] if damage == "no_trailer" else good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:]
    (tmp_path / "cut.tgz").write_bytes(bad)
    with pytest.raises(CorruptFileError, match=r"cut.tgz is damaged .*download it again"):
        safe_extract(tmp_path / "cut.tgz", tmp_path / "work" / "out")
    assert list((tmp_path / "work").iterdir()) == []
    (tmp_path / "good.tgz").write_bytes(good)
    out = safe_extract(tmp_path / "good.tgz", tmp_path / "work" / "good")
    assert (out / "set" / "file3.txt").read_bytes() == MEMBERS["set/file3.txt"]
