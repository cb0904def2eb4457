"""File helpers shared by the data modules: atomic writes, label PNGs, list files, MD5.

Atomic writes go to a temp file beside the target, named `.<target name>.lc-<host>-<pid>-<random>.tmp`
so that one left by a killed process is recognisable: the next write of the same target removes it
when that process is gone. A full disk ends with `NoSpaceError` ("no space left on device MOUNT
writing PATH"), also when torch.save reports it as "enforce fail at inline_container.cc".
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lc.data.errors import CorruptFileError, DataError, NoSpaceError
from lc.data.labels import IGNORE_INDEX, VOC_PALETTE

_UMASK = os.umask(0)
os.umask(_UMASK)
_HOST = socket.gethostname().replace("-", "_").replace("/", "_") or "host"
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# torch.save reports a failed write of its zip container without the errno
_TORCH_WRITE_FAILURES = ("inline_container.cc", "PytorchStreamWriter")


def temp_prefix(path: str | Path) -> str:
    """Prefix of this process's temp files for `path` (see the module doc)."""
    return f".{Path(path).name}.lc-{_HOST}-{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete temp files/folders of `path` left by killed processes on this host; returns them.

    A temp of a live process (or of another host, whose processes cannot be checked) is kept.
    """
    path = Path(path)
    removed = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.lc-*.tmp"):
        owner = candidate.name[len(f".{path.name}.lc-"):-len(".tmp")].rsplit("-", 2)
        if len(owner) != 3 or owner[0] != _HOST or not owner[1].isdigit():
            continue
        pid = int(owner[1])
        if pid == os.getpid() or _process_alive(pid):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system holding `path` (or its nearest existing parent)."""
    current = Path(os.path.abspath(path))
    while not current.exists() and current != current.parent:
        current = current.parent
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


def disk_full(directory: str | Path) -> bool:
    """True if `directory` cannot take one more block: a write probe, because free-space numbers
    do not show quotas or the blocks reserved for root."""
    directory = Path(directory)
    try:
        fd, probe = tempfile.mkstemp(prefix=".lc-space-probe-", dir=directory)
    except OSError as exc:
        return exc.errno in _NO_SPACE_ERRNOS
    try:
        os.write(fd, b"\0" * os.statvfs(directory).f_bsize)
        os.fsync(fd)
    except OSError as exc:
        return exc.errno in _NO_SPACE_ERRNOS
    finally:
        os.close(fd)
        os.unlink(probe)
    return False


def is_no_space(exc: BaseException, directory: str | Path) -> bool:
    """True if `exc` or any exception it wraps means the disk holding `directory` is full.

    The whole chain is read (torch's "unexpected pos" error may wrap the one naming ENOSPC); a failed
    torch write that says nothing more is judged by probing `directory`, which is only meaningful
    while the partial file still takes its space (see `atomic_path`).
    """
    seen: BaseException | None = exc
    torch_write_failed = False
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_SPACE_ERRNOS:
            return True
        if isinstance(seen, RuntimeError) and any(m in str(seen) for m in _TORCH_WRITE_FAILURES):
            if "No space left on device" in str(seen):
                return True
            torch_write_failed = True
        seen = seen.__cause__ or seen.__context__
    return torch_write_failed and disk_full(directory)


def no_space_error(path: str | Path, what: str = "nothing half-written is kept") -> NoSpaceError:
    path = Path(path)
    return NoSpaceError(f"no space left on device {mount_point(path)} writing {path}; {what}. Free space "
                        "there (or move data.root / results_root to a larger disk) and run again",
                        str(path))


@contextlib.contextmanager
def translate_no_space(path: str | Path, what: str = "nothing half-written is kept") -> Iterator[None]:
    """Turn a full-disk failure inside the block into `NoSpaceError` naming `path`."""
    try:
        yield
    except DataError:  # already says what happened (a full disk included)
        raise
    except (OSError, RuntimeError) as exc:
        if is_no_space(exc, Path(path).parent):
            raise no_space_error(path, what) from exc
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temp is removed on any failure; temps of killed earlier writers of `path` are removed first;
    a full disk raises `NoSpaceError` naming `path`.
    """
    path = Path(path)
    with translate_no_space(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
            os.replace(tmp_path, path)
        except DataError:
            raise
        except (OSError, RuntimeError) as exc:
            # judged before the partial temp is removed: once it is gone the disk looks free again
            if is_no_space(exc, path.parent):
                raise no_space_error(path) from exc
            raise
        finally:
            tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def encode_png(array: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """PNG bytes of a uint8 (H, W) index image (mode P if a palette is given, else L) or (H, W, C)."""
    array = np.ascontiguousarray(array)
    if palette is not None:
        if array.ndim != 2 or array.dtype != np.uint8:
            raise ValueError(f"a palette PNG needs a uint8 (H, W) index array, got {array.dtype} "
                             f"{array.shape}")
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    else:
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_voc_label_png(path: str | Path, index: np.ndarray) -> None:
    """An index label as a palette PNG with the VOC colour map (single channel on disk)."""
    write_bytes_atomic(path, encode_png(index.astype(np.uint8), palette=VOC_PALETTE))


PREPARED_FIX = "delete it and run `lc prepare` again"
ARCHIVE_FIX = ("the archive it came from is damaged: delete the archive, download it again and re-run "
               "`lc prepare`")


def load_image(path: str | Path, fix: str = PREPARED_FIX) -> Image.Image:
    """A fully decoded image; a truncated or damaged file raises `CorruptFileError` naming it and `fix`."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptFileError(f"{path}: not a readable image ({type(exc).__name__}: {exc}); the file is "
                               f"truncated or damaged: {fix}") from None


def image_size(path: str | Path, fix: str = ARCHIVE_FIX) -> tuple[int, int]:
    """(height, width) from the image header; an unreadable header raises `CorruptFileError`."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptFileError(f"{path}: not a readable image ({type(exc).__name__}: {exc}); {fix}") from None
    return height, width


def remove_files(paths: Sequence[str | Path]) -> None:
    """Delete `paths` (missing ones are fine): used to drop the "prepared" marker before re-preparing."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


def read_rgb(path: str | Path, fix: str = PREPARED_FIX) -> np.ndarray:
    """(H, W, 3) uint8 RGB image."""
    return np.array(load_image(path, fix).convert("RGB"))


def read_index_png(path: str | Path, fix: str = PREPARED_FIX) -> np.ndarray:
    """(H, W) uint8 indices of a single-channel label PNG (mode P or L)."""
    with load_image(path, fix) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a single-channel index PNG (mode P or L), got mode "
                             f"{image.mode}; run `lc prepare` to convert labels")
        return np.array(image)


def check_label_values(label: np.ndarray, num_classes: int, path: str | Path,
                       ignore_index: int = IGNORE_INDEX) -> None:
    """Raise naming `path` if a label holds a value that is neither a class index nor ignore."""
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        raise ValueError(
            f"{path}: label values {bad.tolist()[:10]} are outside the {num_classes} classes "
            f"(0..{num_classes - 1}) and not the ignore value {ignore_index}; fix or remove this file"
        )


def hash_file(path: str | Path, algorithm: str, chunk_bytes: int = 1 << 20) -> str:
    """Hex digest of a file read in chunks (`algorithm`: any hashlib name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_stamp(path: str | Path) -> dict:
    """{size, mtime_ns} of a file: a cached digest of it is trusted while these are unchanged
    (the archives' MD5 sidecars, lc.data.verify; the training data's digest, lc.data.digest_cache)."""
    stat = Path(path).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def md5_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    return hash_file(path, "md5", chunk_bytes)


def read_id_list(path: str | Path) -> list[str]:
    """Image ids of a VOC/SBD style list (one id per line, blank lines ignored)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"list file {path} is missing; the archive may be incomplete")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def write_sample_list(path: str | Path, rows: Sequence[Sequence[str]]) -> None:
    """A prepared list: one sample per line, `name image_path [label_path]`, paths relative to data.root."""
    for row in rows:
        if any(" " in field for field in row):
            raise ValueError(f"{path}: a name or path contains a space: {row}")
    write_text_atomic(path, "".join(" ".join(row) + "\n" for row in rows))


def read_sample_list(path: str | Path) -> list[tuple[str, ...]]:
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = tuple(line.split())
        if len(fields) not in (2, 3):
            raise ValueError(f"{path}:{number}: expected `name image [label]`, got {line!r}; "
                             "re-run `lc prepare`")
        rows.append(fields)
    return rows


def write_csv(frame, path: str | Path, float_format: str | None = None) -> Path:
    """A pandas DataFrame as CSV (no index), atomically: a temp file beside it, then a rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format=float_format)
    return path
