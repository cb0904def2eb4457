"""Fetch the data set archives: public URLs, a mirror (folder or http(s) base URL), Cityscapes by login.

Every archive is verified by MD5 before use (where the digest comes from: `lc.data.verify`).
Bytes go to `<out>.part` (a partial file is resumed with an HTTP Range request or a seek), transient
failures (connection drops, timeouts, HTTP 5xx) are retried with exponential backoff, and the file
is renamed to `<out>` only once verified. Cityscapes logs in through cityscapesscripts
(`lc.data.credentials`); resume, retries and checksums stay this module's.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import requests
from tqdm import tqdm

from lc.data.credentials import CITYSCAPES_URL, cityscapes_credentials, cityscapes_session
from lc.data.errors import ChecksumError, CredentialsError, DownloadError, NoSpaceError
from lc.data.io import md5_file, translate_no_space
from lc.data.paths import archive_path, archive_spec
from lc.data.verify import (
    MD5SUMS_NAME,
    check_digest,
    expected_md5,
    is_url,
    mirror_location,
    read_md5sums,
    record_verified,
)

log = logging.getLogger(__name__)

CITYSCAPES_MD5_URL = f"{CITYSCAPES_URL}/md5-sum/?packageID={{}}"
CITYSCAPES_FILE_URL = f"{CITYSCAPES_URL}/file-handling/?packageID={{}}"

__all__ = ["MD5SUMS_NAME", "ChecksumError", "CredentialsError", "DownloadError", "NoSpaceError",
           "cityscapes_credentials", "expected_md5", "fetch_archive", "read_md5sums"]


class _TransientError(Exception):
    """A failure worth retrying (connection drop, timeout, 5xx, short read)."""


def _progress(total: int | None, initial: int, desc: str) -> tqdm:
    """A byte progress bar on a terminal; nothing when stderr is a log file."""
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                file=sys.stderr, leave=False, disable=not sys.stderr.isatty())


def _http_transfer(session: requests.Session, url: str, part: Path, chunk_bytes: int, timeout: float,
                   desc: str, allow_redirects: bool = True) -> None:
    """Append the rest of `url` to `part` (HTTP Range from its current size)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout,
                         allow_redirects=allow_redirects) as response:
            if response.status_code == 416:  # the partial file is already complete
                return
            if response.status_code in (401, 403) or 300 <= response.status_code < 400:
                raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}: the server "
                                    "refused the file (a redirect or refusal means the login expired or the "
                                    "account has no access to it); check the account, or use data.mirror")
            if 400 <= response.status_code < 500:
                raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}; check the URL "
                                    "in data.archives or data.mirror")
            if response.status_code >= 500:
                raise _TransientError(f"{url}: HTTP {response.status_code} {response.reason} (a server "
                                      "error)")
            if response.status_code not in (200, 206):
                raise DownloadError(f"{url}: unexpected HTTP {response.status_code} {response.reason}")
            if response.status_code != 206:
                offset = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with open(part, "ab" if offset else "wb") as handle, _progress(total, offset, desc) as bar:
                for chunk in response.iter_content(chunk_size=chunk_bytes):
                    handle.write(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as exc:
        raise _TransientError(f"{url}: {exc}") from exc
    if total is not None and part.stat().st_size < total:
        raise _TransientError(f"{url}: connection closed at {part.stat().st_size} of {total} bytes")


def _copy_transfer(source: Path, part: Path, chunk_bytes: int, desc: str) -> None:
    """Append the rest of a local mirror file to `part`."""
    if not source.exists():
        raise DownloadError(f"{source} is not in the mirror folder; put the file there or change data.mirror")
    total = source.stat().st_size
    offset = part.stat().st_size if part.exists() else 0
    if offset > total:
        part.unlink()
        offset = 0
    with open(source, "rb") as src, open(part, "ab") as dst, _progress(total, offset, desc) as bar:
        src.seek(offset)
        for chunk in iter(lambda: src.read(chunk_bytes), b""):
            dst.write(chunk)
            bar.update(len(chunk))


def fetch_archive(cfg: dict, key: str, out: str | Path | None = None) -> Path:
    """Fetch archive `key` of data.archives to `out` (default <data.root>/archives/<filename>), verified."""
    spec = archive_spec(cfg, key)
    dl = cfg["data"]["download"]
    out = Path(out) if out is not None else archive_path(cfg, key)
    filename = spec["filename"]
    mirror = mirror_location(cfg)
    timeout = float(dl["timeout_s"])
    digest, digest_source = expected_md5(cfg, key)
    if digest is not None and _verified_in_place(out, digest, digest_source):
        return out

    session: requests.Session | None = None
    if mirror:
        source = f"{mirror.rstrip('/')}/{filename}" if is_url(mirror) else str(Path(mirror) / filename)
    elif spec.get("url"):
        source = spec["url"]
    elif spec.get("package_id") is not None:
        source = CITYSCAPES_FILE_URL.format(spec["package_id"])
        session = cityscapes_session(timeout)
        if digest is None:
            digest = _cityscapes_md5(session, spec["package_id"], timeout)
            if _verified_in_place(out, digest, digest_source):
                return out
    else:
        raise DownloadError(
            f"{filename} ({key}) has no public URL: place it in data.mirror or at {out}, and set "
            f"data.archives.{key}.md5"
        )

    part = out.with_name(out.name + ".part")
    kept = (f"the partial file {part} is kept and resumed next time (it is verified by MD5 when complete)")
    with translate_no_space(part, kept):
        out.parent.mkdir(parents=True, exist_ok=True)
        _transfer_with_retries(source, session, part, dl, filename)
    actual = md5_file(part)
    if actual != digest:
        part.unlink()
        raise ChecksumError(
            f"{filename} from {source}: MD5 mismatch, expected {digest} ({digest_source}), got {actual}; "
            "the bad file was deleted. Run again, or check data.mirror and the configured md5."
        )
    os.replace(part, out)
    record_verified(out, digest, digest_source)
    log.info("%s: downloaded, MD5 verified (%s)", out, digest_source)
    return out


def _transfer_with_retries(source: str, session: requests.Session | None, part: Path, dl: dict,
                           filename: str) -> None:
    retries, backoff = int(dl["retries"]), float(dl["backoff_s"])
    chunk_bytes, timeout = int(dl["chunk_bytes"]), float(dl["timeout_s"])
    for attempt in range(retries + 1):
        try:
            if is_url(source):
                _http_transfer(session or requests.Session(), source, part, chunk_bytes, timeout, filename,
                               allow_redirects=session is None)
            else:
                _copy_transfer(Path(source), part, chunk_bytes, filename)
            return
        except _TransientError as exc:
            if attempt == retries:
                if part.exists() and part.stat().st_size == 0:
                    part.unlink()
                partial = (f"; the partial file {part} ({part.stat().st_size} bytes) is kept and resumed "
                           "next time" if part.exists() else "; nothing was kept")
                raise DownloadError(f"{filename}: giving up after {retries + 1} attempts: {exc}{partial}. "
                                    "Try again later, or set data.mirror to another source") from None
            wait = backoff * 2 ** attempt
            log.warning("%s: %s; retrying in %.1f s", filename, exc, wait)
            time.sleep(wait)


def _verified_in_place(out: Path, digest: str, digest_source: str) -> bool:
    """True if `out` is already there with the expected digest (cached by size and mtime); a wrong
    file is deleted."""
    if not out.exists():
        return False
    actual = check_digest(out, digest, digest_source)
    if actual is None:
        log.info("%s: present, MD5 verified (%s)", out, digest_source)
        return True
    log.warning("%s: MD5 %s differs from %s (%s); deleted it, fetching again", out, actual, digest,
                digest_source)
    return False


def _cityscapes_md5(session: requests.Session, package_id: int, timeout: float) -> str:
    url = CITYSCAPES_MD5_URL.format(package_id)
    problem = None
    try:
        response = session.get(url, allow_redirects=False, timeout=timeout)
        if response.status_code != 200:
            problem = f"HTTP {response.status_code} {response.reason}"
    except requests.RequestException as exc:
        problem = type(exc).__name__
    if problem is None:
        fields = response.text.split()
        if fields and len(fields[0]) == 32 and all(c in "0123456789abcdefABCDEF" for c in fields[0]):
            return fields[0].lower()
        problem = "the answer is not an MD5 digest"
    raise DownloadError(f"cannot read the MD5 of Cityscapes package {package_id} from {url}: {problem}; "
                        f"try again later, or set its md5 under data.archives")

