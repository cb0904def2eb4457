"""Fetch the data set archives: public URLs, a mirror (folder or http(s) base URL), Cityscapes by login.

Every archive is verified by MD5 before use. Where the expected digest comes from:
1. synthetic presets (`data.synthetic: true`): the mirror's MD5SUMS file, always (the config's
   digests are those of the real archives, which a synthetic mirror does not hold);
2. otherwise `data.archives.<key>.md5` when set;
3. otherwise the mirror's MD5SUMS entry for the file, when the mirror has one;
4. otherwise, for Cityscapes packages fetched from the server, the digest the server publishes;
5. otherwise the download stops with an error saying how to provide one: nothing is used unverified.

Bytes go to `<out>.part` (a partial file is resumed with an HTTP Range request or a seek), transient
failures are retried with exponential backoff, and the file is renamed to `<out>` only once verified.
"""

from __future__ import annotations

import netrc
import os
import sys
import time
from pathlib import Path

import requests
from tqdm import tqdm

from lc.data.io import md5_file
from lc.data.paths import archive_path, archive_spec

MD5SUMS_NAME = "MD5SUMS"
CITYSCAPES_HOST = "www.cityscapes-dataset.com"
CITYSCAPES_LOGIN_URL = f"https://{CITYSCAPES_HOST}/login"
CITYSCAPES_MD5_URL = f"https://{CITYSCAPES_HOST}/md5-sum/?packageID={{}}"
CITYSCAPES_FILE_URL = f"https://{CITYSCAPES_HOST}/file-handling/?packageID={{}}"


class DownloadError(RuntimeError):
    """An archive could not be fetched or verified; the message says why and what to do."""


class ChecksumError(DownloadError):
    """The fetched bytes do not have the expected MD5 (the bad file has been deleted)."""


class CredentialsError(DownloadError):
    """Cityscapes credentials are missing or rejected."""


class _TransientError(Exception):
    """A failure worth retrying (connection drop, timeout, 5xx, short read)."""


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _mirror_location(cfg: dict) -> str | None:
    mirror = cfg["data"].get("mirror")
    if not mirror:
        return None
    mirror = str(mirror)
    return mirror[len("file://"):] if mirror.startswith("file://") else mirror


def read_md5sums(mirror: str, timeout: float = 60.0) -> dict[str, str] | None:
    """filename -> md5 from the mirror's MD5SUMS (`md5sum` output format), or None if it has none."""
    if _is_url(mirror):
        try:
            response = requests.get(f"{mirror.rstrip('/')}/{MD5SUMS_NAME}", timeout=timeout)
        except requests.RequestException as exc:
            raise DownloadError(f"cannot read {MD5SUMS_NAME} from mirror {mirror}: {exc}") from exc
        if response.status_code == 404:
            return None
        response.raise_for_status()
        text = response.text
    else:
        path = Path(mirror) / MD5SUMS_NAME
        if not path.exists():
            return None
        text = path.read_text()
    sums = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*").strip()] = digest.lower()
    return sums


def expected_md5(cfg: dict, key: str) -> tuple[str | None, str]:
    """(digest, where it came from); digest None means "ask the Cityscapes server" (see module doc)."""
    spec = archive_spec(cfg, key)
    mirror = _mirror_location(cfg)
    timeout = float(cfg["data"]["download"]["timeout_s"])
    sums = read_md5sums(mirror, timeout) if mirror else None
    filename = spec["filename"]
    if cfg["data"].get("synthetic"):
        if sums is None or filename not in sums:
            raise DownloadError(
                f"synthetic preset: no MD5 for {filename} in {mirror}/{MD5SUMS_NAME}; "
                "generate the synthetic archives first with `lc synth --preset <preset>`"
            )
        return sums[filename], f"{mirror}/{MD5SUMS_NAME}"
    if spec.get("md5"):
        return str(spec["md5"]).lower(), f"config data.archives.{key}.md5"
    if sums is not None and filename in sums:
        return sums[filename], f"{mirror}/{MD5SUMS_NAME}"
    if spec.get("package_id") is not None and not mirror:
        return None, "the Cityscapes server"
    raise DownloadError(
        f"no MD5 known for {filename}: set data.archives.{key}.md5 in config.yaml (the output of "
        f"`md5sum {filename}`) or put an {MD5SUMS_NAME} file beside it in data.mirror"
    )


def cityscapes_credentials() -> tuple[str, str]:
    """(username, password) from CITYSCAPES_USERNAME/CITYSCAPES_PASSWORD or ~/.netrc."""
    user, password = os.environ.get("CITYSCAPES_USERNAME"), os.environ.get("CITYSCAPES_PASSWORD")
    if user and password:
        return user, password
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc_path.exists():
        try:
            entry = netrc.netrc(str(netrc_path)).authenticators(CITYSCAPES_HOST)
        except (netrc.NetrcParseError, OSError) as exc:
            raise CredentialsError(f"cannot read {netrc_path}: {exc}") from exc
        if entry and entry[0] and entry[2]:
            return entry[0], entry[2]
    raise CredentialsError(
        "Cityscapes downloads need an account (register at https://www.cityscapes-dataset.com/register/). "
        "Provide the credentials either as environment variables CITYSCAPES_USERNAME and "
        f"CITYSCAPES_PASSWORD, or as a line `machine {CITYSCAPES_HOST} login <user> password <password>` "
        f"in {netrc_path} (chmod 600). Alternatively set data.mirror to a folder holding the zip files."
    )


def cityscapes_session(timeout: float) -> requests.Session:
    """A logged-in session (the flow of cityscapesscripts.download.downloader, non-interactive)."""
    user, password = cityscapes_credentials()
    session = requests.Session()
    try:
        session.get(CITYSCAPES_LOGIN_URL, allow_redirects=False, timeout=timeout).raise_for_status()
        response = session.post(CITYSCAPES_LOGIN_URL, allow_redirects=False, timeout=timeout,
                                data={"username": user, "password": password, "submit": "Login"})
        response.raise_for_status()
    except requests.RequestException as exc:
        raise DownloadError(f"cannot reach {CITYSCAPES_LOGIN_URL}: {exc}") from exc
    if response.status_code != 302:  # the site redirects after a successful login
        raise CredentialsError(f"Cityscapes login rejected for user {user!r}; check the password "
                               "in CITYSCAPES_PASSWORD or ~/.netrc")
    return session


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
            if 400 <= response.status_code < 500:
                raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")
            if response.status_code >= 500:
                raise _TransientError(f"{url}: HTTP {response.status_code}")
            if response.status_code not in (200, 206):  # e.g. a redirect to the login page
                raise DownloadError(f"{url}: unexpected HTTP {response.status_code} {response.reason}")
            if response.status_code != 206:
                offset = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with open(part, "ab" if offset else "wb") as handle, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                file=sys.stderr, leave=False,
            ) as bar:
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
    with open(source, "rb") as src, open(part, "ab") as dst, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
        file=sys.stderr, leave=False,
    ) as bar:
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
    mirror = _mirror_location(cfg)
    timeout = float(dl["timeout_s"])
    digest, digest_source = expected_md5(cfg, key)
    if digest is not None and _verified_in_place(out, digest, digest_source):
        return out

    session: requests.Session | None = None
    if mirror:
        source = f"{mirror.rstrip('/')}/{filename}" if _is_url(mirror) else str(Path(mirror) / filename)
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

    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    retries, backoff = int(dl["retries"]), float(dl["backoff_s"])
    chunk_bytes = int(dl["chunk_bytes"])
    for attempt in range(retries + 1):
        try:
            if _is_url(source):
                _http_transfer(session or requests.Session(), source, part, chunk_bytes, timeout, filename,
                               allow_redirects=session is None)
            else:
                _copy_transfer(Path(source), part, chunk_bytes, filename)
            break
        except _TransientError as exc:
            if attempt == retries:
                raise DownloadError(f"{filename}: giving up after {retries + 1} attempts: {exc}; "
                                    f"the partial file {part} is kept and resumed next time") from exc
            wait = backoff * 2 ** attempt
            print(f"{filename}: {exc}; retrying in {wait:.1f} s", file=sys.stderr)
            time.sleep(wait)

    actual = md5_file(part)
    if actual != digest:
        part.unlink()
        raise ChecksumError(
            f"{filename} from {source}: MD5 mismatch, expected {digest} ({digest_source}), got {actual}; "
            "the bad file was deleted. Run again, or check data.mirror and the configured md5."
        )
    os.replace(part, out)
    print(f"{out}: downloaded, MD5 verified ({digest_source})", file=sys.stderr)
    return out


def _verified_in_place(out: Path, digest: str, digest_source: str) -> bool:
    """True if `out` is already there with the expected digest; a wrong file is deleted."""
    if not out.exists():
        return False
    actual = md5_file(out)
    if actual == digest:
        print(f"{out}: present, MD5 verified ({digest_source})", file=sys.stderr)
        return True
    print(f"{out}: MD5 {actual} differs from {digest} ({digest_source}); deleting it and fetching again",
          file=sys.stderr)
    out.unlink()
    return False


def _cityscapes_md5(session: requests.Session, package_id: int, timeout: float) -> str:
    url = CITYSCAPES_MD5_URL.format(package_id)
    try:
        response = session.get(url, allow_redirects=False, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise DownloadError(f"cannot read the MD5 of Cityscapes package {package_id}: {exc}") from exc
    return response.text.split()[0].lower()

