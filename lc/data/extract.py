"""Safe extraction of tar and zip archives into a temp folder renamed into place."""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from lc.data.paths import archive_path, extracted_dir

_MARKER = ".extracted_from.json"


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the extraction folder (or is a device file)."""


def _escapes(relative: str) -> bool:
    """True if a member path (or link target, relative to the archive root) leaves the root."""
    if relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        return True
    normalised = posixpath.normpath(relative.replace("\\", "/"))
    return normalised == ".." or normalised.startswith("../")


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    if _escapes(member.name):
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} would be written outside the "
                                 "target folder (absolute path or '..'); refusing to extract this archive")
    if member.issym():
        target = posixpath.join(posixpath.dirname(member.name), member.linkname)
        if member.linkname.startswith("/") or _escapes(target):
            raise UnsafeArchiveError(f"{archive}: symlink {member.name!r} -> {member.linkname!r} points "
                                     "outside the target folder; refusing to extract this archive")
    elif member.islnk():
        if _escapes(member.linkname):
            raise UnsafeArchiveError(f"{archive}: hard link {member.name!r} -> {member.linkname!r} points "
                                     "outside the target folder; refusing to extract this archive")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device or FIFO; refusing to "
                                 "extract this archive")


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a tar (any compression) or zip file to `dest`, which appears only when complete.

    Members with absolute paths, `..` components, links leaving the folder, or device files make
    the whole extraction fail (nothing is left behind).
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists; remove it before extracting {archive} there")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:
                    if _escapes(info.filename):
                        raise UnsafeArchiveError(
                            f"{archive}: member {info.filename!r} would be written outside the target "
                            "folder (absolute path or '..'); refusing to extract this archive")
                for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", leave=False,
                                 file=sys.stderr):
                    zf.extract(info, tmp)
        elif tarfile.is_tarfile(archive):
            # One pass over the (possibly compressed) stream: check each member before writing it.
            with tarfile.open(archive, "r:*") as tf:
                for member in tqdm(tf, desc=f"extract {archive.name}", unit="file", leave=False,
                                   file=sys.stderr):
                    _check_tar_member(member, archive)
                    tf.extract(member, tmp, filter="data")
        else:
            raise ValueError(f"{archive} is neither a tar nor a zip file; delete it and download again")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def extract_archive(cfg: dict, key: str) -> Path:
    """<data.root>/raw/<key>/ holding the contents of archive `key` (re-extracted if the archive changed)."""
    source = archive_path(cfg, key)
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing; fetch it first with `lc download {key} "
                                f"--preset {cfg['preset']}`")
    dest = extracted_dir(cfg, key)
    stat = source.stat()
    stamp = {"archive": source.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    marker = dest / _MARKER
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    staging = dest.with_name(dest.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    safe_extract(source, staging)
    (staging / _MARKER).write_text(json.dumps(stamp))
    os.replace(staging, dest)
    return dest
