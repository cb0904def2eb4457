"""One digest of everything a training run reads: its list file and every image and label it names.

A checkpoint records it (lc.training.initialise), so a run whose data changed since (a re-prepare
with other data, a label fixed by hand) restarts instead of continuing from weights trained on the
old data. Hashing 20,000 files before every resume would take minutes, so, as for the archives'
MD5 sidecars (lc.data.verify), each file's SHA-256 is cached with its size and mtime
(`lc.data.io.file_stamp`) and trusted again only while both are unchanged: the cache
`.<list name>.sha256.json` beside the list holds one entry per file. A change that keeps a file's
size and mtime passes unseen (as for the archives; `lc prepare --verify` rehashes those).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from lc.data.io import file_stamp, hash_file, read_sample_list, write_text_atomic

__all__ = ["data_digest", "digest_cache_path"]

log = logging.getLogger(__name__)


def digest_cache_path(list_file: str | Path) -> Path:
    list_file = Path(list_file)
    return list_file.with_name(f".{list_file.name}.sha256.json")


def _load_cache(path: Path) -> dict[str, dict]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    files = record.get("files") if isinstance(record, dict) else None
    return files if isinstance(files, dict) else {}


def data_digest(root: str | Path, list_file: str | Path) -> str:
    """SHA-256 over the list file and every file it names (paths relative to `root`), each file
    hashed only when its size or mtime changed since the cache last saw it; the changed files are
    logged. A missing file raises FileNotFoundError naming it and `lc prepare`."""
    root, list_file = Path(root), Path(list_file)
    cache_file = digest_cache_path(list_file)
    cache = _load_cache(cache_file)
    names = sorted({field for row in read_sample_list(list_file) for field in row[1:]})
    entries, changed = {}, []
    total = hashlib.sha256(f"list {hash_file(list_file, 'sha256')}\n".encode())
    for name in names:
        path = root / name
        try:
            stamp = file_stamp(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}, named in {list_file}, is missing; run `lc prepare` "
                                    "again") from None
        entry = cache.get(name)
        if not isinstance(entry, dict) or {k: entry.get(k) for k in stamp} != stamp or "sha256" not in entry:
            entry = {**stamp, "sha256": hash_file(path, "sha256")}
            changed.append(name)
        entries[name] = entry
        total.update(f"{name} {entry['sha256']}\n".encode())
    if changed or set(cache) != set(entries):
        if cache:
            log.info("%s: %d of %d files hashed again (new, or size or mtime changed), e.g. %s", list_file,
                     len(changed), len(names), ", ".join(changed[:3]) or "none")
        try:
            write_text_atomic(cache_file, json.dumps({"files": entries}) + "\n")
        except OSError as exc:  # e.g. a shared, read-only data folder: hash again next time
            log.warning("cannot write %s (%s); the training data will be hashed again next time", cache_file,
                        exc.strerror or exc)
    return total.hexdigest()
