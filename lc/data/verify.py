"""Which MD5 an archive must have, and checking it, with the result cached beside the archive.

Where the expected digest comes from:
1. synthetic presets (`data.synthetic: true`): the mirror's MD5SUMS file, always (the config's
   digests are those of the real archives, which a synthetic mirror does not hold);
2. otherwise `data.archives.<key>.md5` when set;
3. otherwise the mirror's MD5SUMS entry for the file, when the mirror has one;
4. otherwise, for Cityscapes packages fetched from the server, the digest the server publishes
   (recorded in the sidecar by `lc download`);
5. otherwise an error saying how to provide one: nothing is used unverified.

Hashing an 11 GB archive takes minutes, so a verified archive gets a sidecar
`.<filename>.md5.json` holding its size, mtime and digest; the digest is trusted again only while
size and mtime are unchanged.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import requests

from lc.data.errors import ChecksumError, DownloadError
from lc.data.io import file_stamp, md5_file, write_text_atomic
from lc.data.paths import archive_spec

log = logging.getLogger(__name__)

MD5SUMS_NAME = "MD5SUMS"
_MD5_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")  # `md5sum` output: digest, space, ' ' or '*', name


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def mirror_location(cfg: dict) -> str | None:
    mirror = cfg["data"].get("mirror")
    if not mirror:
        return None
    mirror = str(mirror)
    return mirror[len("file://"):] if mirror.startswith("file://") else mirror


def parse_md5sums(text: str, where: str) -> dict[str, str]:
    """filename -> md5 of `md5sum` output; a malformed line is an error naming `where` and the line."""
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _MD5_LINE.match(line.rstrip("\r"))
        if match is None:
            raise DownloadError(
                f"{where}, line {number}: not an `md5sum` line (expected 32 hex digits, two spaces, the "
                "file name); regenerate the file with `md5sum * > MD5SUMS` in the mirror (or `lc synth`)")
        sums[match.group(2).strip()] = match.group(1).lower()
    return sums


def _get_md5sums_text(url: str, timeout: float, retries: int, backoff: float) -> str | None:
    for attempt in range(retries + 1):
        try:
            response = requests.get(url, timeout=timeout)
            if response.status_code == 404:
                return None
            if response.status_code < 500:
                if response.status_code != 200:
                    raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}; check "
                                        "data.mirror")
                return response.text
            problem = f"HTTP {response.status_code} {response.reason}"
        except requests.RequestException as exc:
            problem = str(exc)
        if attempt == retries:
            raise DownloadError(f"cannot read {url}: {problem} (after {retries + 1} attempts); the mirror "
                                "has a problem: try again later or change data.mirror")
        time.sleep(backoff * 2 ** attempt)
    return None  # not reached


def read_md5sums(mirror: str, timeout: float = 60.0, retries: int = 0,
                 backoff: float = 1.0) -> dict[str, str] | None:
    """filename -> md5 from the mirror's MD5SUMS (`md5sum` output format), or None if it has none."""
    if is_url(mirror):
        url = f"{mirror.rstrip('/')}/{MD5SUMS_NAME}"
        text = _get_md5sums_text(url, timeout, retries, backoff)
        return None if text is None else parse_md5sums(text, url)
    path = Path(mirror) / MD5SUMS_NAME
    if not path.exists():
        return None
    return parse_md5sums(path.read_text(errors="replace"), str(path))


def expected_md5(cfg: dict, key: str) -> tuple[str | None, str]:
    """(digest, where it came from); digest None means "ask the Cityscapes server" (see module doc)."""
    spec = archive_spec(cfg, key)
    mirror = mirror_location(cfg)
    dl = cfg["data"]["download"]
    filename = spec["filename"]
    if spec.get("md5") and not cfg["data"].get("synthetic"):
        return str(spec["md5"]).lower(), f"config data.archives.{key}.md5"
    sums = (read_md5sums(mirror, float(dl["timeout_s"]), int(dl["retries"]), float(dl["backoff_s"]))
            if mirror else None)
    if cfg["data"].get("synthetic"):
        if sums is None or filename not in sums:
            raise DownloadError(
                f"synthetic preset: no MD5 for {filename} in {mirror}/{MD5SUMS_NAME}; "
                "generate the synthetic archives first with `lc synth --preset <preset>`"
            )
        return sums[filename], f"{mirror}/{MD5SUMS_NAME}"
    if sums is not None and filename in sums:
        return sums[filename], f"{mirror}/{MD5SUMS_NAME}"
    if spec.get("package_id") is not None and not mirror:
        return None, "the Cityscapes server"
    raise DownloadError(
        f"no MD5 known for {filename}: set data.archives.{key}.md5 in config.yaml (the output of "
        f"`md5sum {filename}`) or put an {MD5SUMS_NAME} file beside it in data.mirror"
    )


def sidecar_path(archive: str | Path) -> Path:
    archive = Path(archive)
    return archive.with_name(f".{archive.name}.md5.json")


def cached_md5(archive: str | Path) -> dict | None:
    """The sidecar record ({md5, source, size, mtime_ns}) if it still describes `archive`, else None."""
    archive, sidecar = Path(archive), sidecar_path(archive)
    if not archive.exists() or not sidecar.exists():
        return None
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    stamp = file_stamp(archive)
    if not isinstance(record, dict) or {k: record.get(k) for k in stamp} != stamp:
        return None
    return record


def record_verified(archive: str | Path, digest: str, source: str) -> None:
    """Write the sidecar after `archive` was hashed and found to have `digest`."""
    archive = Path(archive)
    record = json.dumps({"md5": digest, "source": source, **file_stamp(archive)}) + "\n"
    try:
        write_text_atomic(sidecar_path(archive), record)
    except PermissionError:  # e.g. a shared, read-only archive folder: verify by hashing every time
        log.warning("cannot write %s; %s will be hashed again before its next use", sidecar_path(archive),
                    archive)


def check_digest(archive: str | Path, digest: str, source: str, rehash: bool = False) -> str | None:
    """Compare `archive` (its cached digest while size and mtime match, else hashed; always hashed
    with `rehash`) with `digest`.

    Match: the sidecar is brought up to date, returns None. Mismatch: the archive and its sidecar are
    deleted and the digest the file had is returned, for the caller's message.
    """
    archive = Path(archive)
    record = None if rehash else cached_md5(archive)
    actual = str(record["md5"]) if record else md5_file(archive)
    if actual != digest:
        archive.unlink(missing_ok=True)
        sidecar_path(archive).unlink(missing_ok=True)
        return actual
    if record is None or record.get("md5") != digest:
        record_verified(archive, digest, source)
    return None


def verify_archive(cfg: dict, key: str, archive: str | Path, rehash: bool = False) -> str:
    """Check `archive` against its expected digest before it is used; returns the digest.

    A mismatch deletes the archive (and its sidecar) and raises `ChecksumError` naming both digests.
    rehash: hash the file even while its cached digest would be trusted (`lc prepare --verify`).
    """
    archive = Path(archive)
    record = cached_md5(archive)
    digest, source = expected_md5(cfg, key)
    if digest is None:  # Cityscapes from the server: the digest `lc download` recorded from it
        if record is None or record.get("source") != source:
            raise DownloadError(
                f"{archive} cannot be verified: no digest is known for it. Fetch it with `lc download {key} "
                f"--preset {cfg['preset']}` (which checks it against the digest the Cityscapes server "
                f"publishes), or set data.archives.{key}.md5 to the output of `md5sum {archive.name}`")
        if not rehash:
            return str(record["md5"])
        digest = str(record["md5"])
    actual = check_digest(archive, digest, source, rehash)
    if actual is not None:
        raise ChecksumError(
            f"{archive}: MD5 {actual} differs from the expected {digest} ({source}); the file was "
            f"truncated or damaged and has been deleted. Fetch it again with `lc download {key} --preset "
            f"{cfg['preset']}` (or place a good copy there by hand)")
    log.info("%s: MD5 verified (%s)", archive, source)
    return digest
