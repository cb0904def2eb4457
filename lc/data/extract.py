"""Safe extraction of tar and zip archives into a temp folder renamed into place.

An archive's MD5 is checked (`lc.data.verify`, cached by size and mtime) before every extraction;
a damaged archive (truncated stream, a tar without its end-of-archive block, a compressed stream
without its end, e.g. a .tgz cut inside its gzip trailer, bad CRC) or a hostile
one (members or links leaving the folder, device files) fails with the file named and nothing
extracted.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from lc.data.errors import CorruptFileError, UnsafeArchiveError
from lc.data.io import remove_stale_temps, temp_prefix, translate_no_space
from lc.data.paths import archive_path, extracted_dir
from lc.data.verify import verify_archive

_MARKER = ".extracted_from.json"
# What a damaged compressed stream or container raises while being read
_DAMAGED = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, gzip.BadGzipFile)

__all__ = ["CorruptFileError", "UnsafeArchiveError", "extract_archive", "safe_extract"]


class _EndCheckingTarInfo(tarfile.TarInfo):
    """Records on the TarFile whether reading stopped at an end-of-archive (all-zero) block.

    tarfile ends its member iteration quietly at end of file, so a tar cut at a member boundary
    would otherwise look complete.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            tar.lc_saw_end_block = True  # type: ignore[attr-defined]
            raise


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


def _damaged(archive: Path, detail: str) -> CorruptFileError:
    return CorruptFileError(f"{archive} is damaged ({detail}); nothing was extracted. Delete it and download "
                            "it again (`lc download`), or place a good copy there")


def _extract_tar(archive: Path, tmp: Path) -> None:
    # One pass over the (possibly compressed) stream: check each member before writing it.
    with tarfile.open(archive, "r:*", tarinfo=_EndCheckingTarInfo) as tf:
        tf.lc_saw_end_block = False  # type: ignore[attr-defined]
        for member in tqdm(tf, desc=f"extract {archive.name}", unit="file", leave=False, file=sys.stderr,
                           disable=not sys.stderr.isatty()):
            _check_tar_member(member, archive)
            try:
                tf.extract(member, tmp, filter="data")
            except tarfile.FilterError as exc:  # e.g. a link reaching outside through other links
                raise UnsafeArchiveError(f"{archive}: member {member.name!r} would be written outside the "
                                         f"target folder ({type(exc).__name__}); refusing to extract this "
                                         "archive") from None
        if not tf.lc_saw_end_block:  # type: ignore[attr-defined]
            raise _damaged(archive, f"the tar stream ends after {len(tf.getmembers())} members without its "
                                    "end-of-archive block: the file is truncated")
        _read_to_the_end(tf.fileobj)


def _read_to_the_end(stream) -> None:
    """Read what follows the end-of-archive block: tarfile stops there, so a compressed stream's end
    (gzip's CRC and length trailer, bzip2's and xz's end markers) would go unchecked. A stream cut
    short raises EOFError, a bad CRC gzip.BadGzipFile (both in _DAMAGED)."""
    while stream.read(1 << 20):
        pass


def _extract_zip(archive: Path, tmp: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            if _escapes(info.filename):
                raise UnsafeArchiveError(
                    f"{archive}: member {info.filename!r} would be written outside the target "
                    "folder (absolute path or '..'); refusing to extract this archive")
        for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", leave=False, file=sys.stderr,
                         disable=not sys.stderr.isatty()):
            zf.extract(info, tmp)


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a tar (any compression) or zip file to `dest`, which appears only when complete.

    Members with absolute paths, `..` components, links leaving the folder, or device files make
    the whole extraction fail (`UnsafeArchiveError`), as does a damaged archive (`CorruptFileError`);
    nothing is left behind. A full disk raises `NoSpaceError`.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists; remove it before extracting {archive} there")
    with translate_no_space(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(dest)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(dest), suffix=".tmp", dir=dest.parent))
        try:
            try:
                if zipfile.is_zipfile(archive):
                    _extract_zip(archive, tmp)
                elif tarfile.is_tarfile(archive):
                    _extract_tar(archive, tmp)
                else:
                    raise _damaged(archive, "neither a tar nor a zip file; a truncated zip looks like this")
            except _DAMAGED as exc:
                raise _damaged(archive, f"{type(exc).__name__}: {exc}") from None
            except OSError as exc:
                if exc.errno is not None:  # the file system's complaint (e.g. a full disk), not the archive's
                    raise
                raise _damaged(archive, f"{type(exc).__name__}: {exc}") from None  # e.g. bz2's bad stream
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return dest


def extract_archive(cfg: dict, key: str, verify: bool = False) -> Path:
    """<data.root>/raw/<key>/ holding the contents of archive `key`, MD5-verified first.

    Re-extracted when the archive changed (size or mtime) or was extracted without verification.
    verify: hash the archive again even where its cached digest would be trusted (a file damaged in
    place with its size and mtime restored); a mismatch deletes it and raises ChecksumError.
    """
    source = archive_path(cfg, key)
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing; fetch it first with `lc download {key} "
                                f"--preset {cfg['preset']}`")
    if verify:
        verify_archive(cfg, key, source, rehash=True)
    dest = extracted_dir(cfg, key)
    stat = source.stat()
    stamp = {"archive": source.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    marker = dest / _MARKER
    if marker.exists():
        try:
            previous = json.loads(marker.read_text())
        except ValueError:
            previous = {}
        if previous.get("md5") and {k: previous.get(k) for k in stamp} == stamp:
            return dest
    stamp["md5"] = verify_archive(cfg, key, source)
    if dest.exists():
        shutil.rmtree(dest)
    staging = dest.with_name(dest.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    safe_extract(source, staging)
    with translate_no_space(staging / _MARKER):
        (staging / _MARKER).write_text(json.dumps(stamp))
    os.replace(staging, dest)
    return dest
