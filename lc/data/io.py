"""File helpers shared by the data modules: atomic writes, label PNGs, list files, MD5."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lc.data.labels import VOC_PALETTE

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp_path, path)
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


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB image."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def read_index_png(path: str | Path) -> np.ndarray:
    """(H, W) uint8 indices of a single-channel label PNG (mode P or L)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a single-channel index PNG (mode P or L), got mode "
                             f"{image.mode}; run `lc prepare` to convert labels")
        return np.array(image)


def check_label_values(label: np.ndarray, num_classes: int, path: str | Path,
                       ignore_index: int = 255) -> None:
    """Raise naming `path` if a label holds a value that is neither a class index nor ignore."""
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != ignore_index)]
    if bad.size:
        raise ValueError(
            f"{path}: label values {bad.tolist()[:10]} are outside the {num_classes} classes "
            f"(0..{num_classes - 1}) and not the ignore value {ignore_index}; fix or remove this file"
        )


def md5_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
