"""The data layer's promises (README, "What this pipeline guarantees"), each tested against the fault.

- never printed: a canary password through every credential path (environment, netrc, a broken
  netrc, a netrc others can read, server refusals) appears in no output, log record, exception
  text or file;
- verified before use: an archive placed by hand is checked against its MD5 before every
  extraction (cached by size and mtime); a tar cut at a member boundary is corrupt;
- survives interruption: a failed re-prepare leaves no "prepared" list; temp files of killed
  writers are removed on the next write; a full disk says "no space left on device ... writing PATH";
- clear errors naming the file and the fix instead of tracebacks.

No test reaches the internet: the Cityscapes host is answered by a loopback server.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import traceback
import urllib.parse
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from cityscapesscripts.download import downloader
from helpers import TAR_MEMBERS as MEMBERS
from helpers import LoopbackServer, tar_bytes
from PIL import Image

import lc.data.download as download_module
from lc.cli.main import main as lc_main
from lc.config import load_config
from lc.data.cityscapes import prepare_cityscapes
from lc.data.credentials import CITYSCAPES_URL
from lc.data.download import fetch_archive
from lc.data.errors import (
    ChecksumError,
    CorruptFileError,
    CredentialsError,
    DataError,
    DownloadError,
    NoSpaceError,
    UnsafeArchiveError,
)
from lc.data.extract import extract_archive, safe_extract
from lc.data.io import atomic_path, disk_full, md5_file, read_index_png, temp_prefix, write_text_atomic
from lc.data.paths import prepared_list_files, weights_path
from lc.data.synthetic import make_synthetic_mirror
from lc.data.verify import read_md5sums, sidecar_path
from lc.data.voc import prepare_voc, read_voc_label

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config.yaml"
CANARY = "CANARY-pw-5f3a9c1e"  # the password every credential test uses; it must never surface
USER = "alice"
PACKAGE = b"PK-not-really-a-zip" * 500


# --- helpers ---------------------------------------------------------------------------------
def _cfg(tmp_path: Path, **data) -> dict:
    overrides = {"data": {"root": str(tmp_path / "data"), "mirror": None, "synthetic": False,
                          "download": {"retries": 1, "backoff_s": 0.01, "timeout_s": 10, "chunk_bytes": 4096},
                          **data}}
    return load_config(CONFIG, preset="test", overrides=overrides)


def _cli_config(tmp_path: Path, **data) -> Path:
    """A config file whose test preset has these data settings (for running `lc` itself)."""
    raw = yaml.safe_load(CONFIG.read_text())
    raw["presets"]["test"]["data"].update({"root": str(tmp_path / "data"), "mirror": None,
                                           "synthetic": False, **data})
    raw["presets"]["test"]["data"]["download"] = {"retries": 1, "backoff_s": 0.01, "timeout_s": 10,
                                                  "chunk_bytes": 4096}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _chain_text(exc: BaseException) -> str:
    """Everything an exception could show: its traceback text and every exception it links to."""
    parts, seen = ["".join(traceback.format_exception(exc))], exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(getattr(seen, "args", ""))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def _files_containing(root: Path, secret: str, skip: tuple[Path, ...] = ()) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and path not in skip and secret.encode() in path.read_bytes():
            hits.append(path)
    return hits


def _assert_no_canary(capfd, caplog, tmp_path: Path, exc: BaseException | None = None,
                      skip: tuple[Path, ...] = ()) -> None:
    out, err = capfd.readouterr()
    assert CANARY not in out and CANARY not in err
    assert not [r for r in caplog.records if CANARY in r.getMessage()]
    if exc is not None:
        assert CANARY not in _chain_text(exc)
    assert _files_containing(tmp_path, CANARY, skip) == []


class _CityscapesSite(LoopbackServer):
    """The Cityscapes login/md5/file endpoints on loopback; `refuse` makes one of them fail."""

    def __init__(self, refuse: dict[str, int] | None = None):
        self.refuse = refuse or {}
        self.logins: list[dict[str, list[str]]] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = urllib.parse.urlparse(self.path).path
                if path.rstrip("/") in site.refuse:
                    self._send(site.refuse[path.rstrip("/")], b"refused")
                elif path == "/login":
                    self._send(200, b"<form>login</form>")
                elif path.startswith("/md5-sum"):
                    self._send(200, f"{hashlib.md5(PACKAGE).hexdigest()}  gtFine.zip\n".encode())
                elif path.startswith("/file-handling"):
                    self._send(200, PACKAGE)
                else:
                    self._send(404)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                fields = urllib.parse.parse_qs(body)
                site.logins.append(fields)
                if "/login" in site.refuse:
                    self._send(site.refuse["/login"], b"server error")
                elif fields.get("username") == [USER] and fields.get("password") == [CANARY]:
                    self._send(302, b"", {"Location": "/", "Set-Cookie": "session=ok"})
                else:
                    self._send(200, b"<form>Bad credentials</form>")

        super().__init__(Handler)


@pytest.fixture
def cityscapes_site(monkeypatch, tmp_path, caplog):
    """Route https://www.cityscapes-dataset.com (hard-coded in cityscapesscripts) to a loopback site;
    no credentials anywhere unless the test provides them; count cityscapesscripts logins."""
    caplog.set_level(logging.DEBUG)
    for name in ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    sites: list[_CityscapesSite] = []
    original_send = requests.adapters.HTTPAdapter.send

    def send(self, request, **kwargs):
        if request.url.startswith(CITYSCAPES_URL):
            assert sites, f"{request.url}: the test never started its loopback site (call cityscapes_site())"
            request.url = sites[-1].url + request.url[len(CITYSCAPES_URL):]
        return original_send(self, request, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    calls = []
    original_login = downloader.login
    monkeypatch.setattr(downloader, "login", lambda: calls.append(1) or original_login())

    def start(refuse: dict[str, int] | None = None) -> _CityscapesSite:
        site = _CityscapesSite(refuse)
        site.login_calls = calls
        sites.append(site)
        return site.__enter__()

    yield start
    for site in sites:
        site.__exit__()


def _cityscapes_cfg(tmp_path: Path) -> dict:
    return _cfg(tmp_path, archives={"cityscapes_gtfine": {"package_id": 1, "filename": "gtFine.zip",
                                                          "md5": None, "size": None}})


def _netrc(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "netrc"
    path.write_text(text)
    path.chmod(mode)
    return path


# --- never printed: credentials ---------------------------------------------------------------
def test_env_credentials_log_in_through_cityscapesscripts(cityscapes_site, monkeypatch, tmp_path, capfd,
                                                          caplog):
    site = cityscapes_site()
    monkeypatch.setenv("CITYSCAPES_USERNAME", USER)
    monkeypatch.setenv("CITYSCAPES_PASSWORD", CANARY)
    out = fetch_archive(_cityscapes_cfg(tmp_path), "cityscapes_gtfine")
    assert out.read_bytes() == PACKAGE
    assert site.login_calls == [1]  # cityscapesscripts' login did it
    assert site.logins == [{"username": [USER], "password": [CANARY], "submit": ["Login"]}]
    assert not (tmp_path / "xdg").exists()  # its offer to store the password was declined
    _assert_no_canary(capfd, caplog, tmp_path)


def test_netrc_credentials_are_used_and_never_shown(cityscapes_site, monkeypatch, tmp_path, capfd, caplog):
    site = cityscapes_site()
    netrc_file = _netrc(tmp_path, f"machine www.cityscapes-dataset.com login {USER} password {CANARY}\n")
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert fetch_archive(_cityscapes_cfg(tmp_path), "cityscapes_gtfine").read_bytes() == PACKAGE
    assert site.logins[0]["password"] == [CANARY]
    _assert_no_canary(capfd, caplog, tmp_path, skip=(netrc_file,))


def test_stored_cityscapesscripts_credentials_are_used(cityscapes_site, tmp_path, capfd, caplog):
    site = cityscapes_site()
    stored = tmp_path / "xdg" / "cityscapesscripts" / "credentials.json"  # where csDownload keeps them
    stored.parent.mkdir(parents=True)
    stored.write_text(f'{{"username": "{USER}", "password": "{CANARY}"}}')
    stored.chmod(0o600)
    assert fetch_archive(_cityscapes_cfg(tmp_path), "cityscapes_gtfine").read_bytes() == PACKAGE
    assert site.logins[0]["password"] == [CANARY] and site.login_calls == [1]
    _assert_no_canary(capfd, caplog, tmp_path, skip=(stored,))


def test_netrc_without_password_keyword_names_file_and_line_only(cityscapes_site, monkeypatch, tmp_path,
                                                                 capfd, caplog):
    cityscapes_site()
    netrc_file = _netrc(tmp_path, "machine example.org login bob password x\n"
                                  f"machine www.cityscapes-dataset.com login {USER} {CANARY}\n")
    monkeypatch.setenv("NETRC", str(netrc_file))
    with pytest.raises(CredentialsError) as info:
        fetch_archive(_cityscapes_cfg(tmp_path), "cityscapes_gtfine")
    assert f"{netrc_file}, line 2" in str(info.value) and "password" in str(info.value)
    _assert_no_canary(capfd, caplog, tmp_path, info.value, skip=(netrc_file,))


def test_bad_netrc_through_the_command_line(cityscapes_site, monkeypatch, tmp_path, capfd, caplog):
    cityscapes_site()
    netrc_file = _netrc(tmp_path, f"machine www.cityscapes-dataset.com login {USER} {CANARY}\n")
    monkeypatch.setenv("NETRC", str(netrc_file))
    config = _cli_config(tmp_path, archives={**yaml.safe_load(CONFIG.read_text())["data"]["archives"]})
    assert lc_main(["download", "cityscapes_gtfine", "--config", str(config), "--preset", "test"]) == 2
    err = capfd.readouterr().err
    assert f"{netrc_file}, line 1" in err and CANARY not in err and "Traceback" not in err
    _assert_no_canary(capfd, caplog, tmp_path, skip=(netrc_file,))


def test_netrc_readable_by_others_is_refused(cityscapes_site, monkeypatch, tmp_path, capfd, caplog):
    site = cityscapes_site()
    netrc_file = _netrc(tmp_path, f"machine www.cityscapes-dataset.com login {USER} password {CANARY}\n",
                        mode=0o644)
    monkeypatch.setenv("NETRC", str(netrc_file))
    with pytest.raises(CredentialsError, match=f"chmod 600 {netrc_file}") as info:
        fetch_archive(_cityscapes_cfg(tmp_path), "cityscapes_gtfine")
    assert site.logins == []  # refused before anything was sent
    _assert_no_canary(capfd, caplog, tmp_path, info.value, skip=(netrc_file,))


@pytest.mark.parametrize(("refuse", "error", "message"), [
    (None, CredentialsError, "login rejected for user 'alice'"),  # wrong password: no redirect
    ({"/login": 500}, DownloadError, "HTTP 500"),
    ({"/file-handling": 403}, DownloadError, "HTTP 403"),
    ({"/md5-sum": 500}, DownloadError, "MD5 of Cityscapes package 1"),
])
def test_server_refusals_are_clear_and_never_show_the_password(cityscapes_site, monkeypatch, tmp_path, capfd,
                                                               caplog, refuse, error, message):
    cityscapes_site(refuse)
    monkeypatch.setenv("CITYSCAPES_USERNAME", USER)
    monkeypatch.setenv("CITYSCAPES_PASSWORD", CANARY if refuse else CANARY + "-wrong")
    with pytest.raises(error, match=message) as info:
        fetch_archive(_cityscapes_cfg(tmp_path), "cityscapes_gtfine")
    _assert_no_canary(capfd, caplog, tmp_path, info.value)
    assert not (tmp_path / "data" / "archives" / "gtFine.zip").exists()


def test_half_set_environment_is_named(cityscapes_site, monkeypatch, tmp_path):
    site = cityscapes_site()  # started, so a regression that goes on to log in stays on the loopback
    monkeypatch.setenv("CITYSCAPES_USERNAME", USER)
    with pytest.raises(CredentialsError, match="CITYSCAPES_PASSWORD is not set"):
        fetch_archive(_cityscapes_cfg(tmp_path), "cityscapes_gtfine")
    assert site.logins == []


# --- verified before use: archives placed by hand ------------------------------------------------

def _hand_placed(tmp_path: Path, data: bytes, md5: str) -> tuple[dict, Path]:
    cfg = _cfg(tmp_path, archives={"blob": {"url": None, "filename": "blob.tar", "md5": md5}})
    archive = tmp_path / "data" / "archives" / "blob.tar"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(data)
    return cfg, archive


def test_hand_placed_archive_is_verified_before_extraction(tmp_path, monkeypatch):
    good = tar_bytes(MEMBERS)
    cut = good[: 2 * 2048]  # two whole members, no end-of-archive blocks
    cfg, archive = _hand_placed(tmp_path, cut, hashlib.md5(good).hexdigest())
    with pytest.raises(ChecksumError, match="blob.tar: MD5 .* differs from the expected") as info:
        extract_archive(cfg, "blob")
    assert "lc download blob" in str(info.value)
    assert not archive.exists() and not (tmp_path / "data" / "raw" / "blob").exists()

    archive.write_bytes(good)
    assert (extract_archive(cfg, "blob") / "set" / "file3.txt").read_bytes() == MEMBERS["set/file3.txt"]
    assert sidecar_path(archive).exists()
    # the verified digest is reused while size and mtime are unchanged ...
    shutil.rmtree(tmp_path / "data" / "raw" / "blob")
    hashed = []
    monkeypatch.setattr("lc.data.verify.md5_file", lambda path: hashed.append(path) or md5_file(path))
    extract_archive(cfg, "blob")
    assert hashed == []
    # ... and recomputed when the file changes behind its back
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    extract_archive(cfg, "blob")
    assert hashed == [archive]


def test_extraction_without_a_verified_stamp_is_redone(tmp_path):
    good = tar_bytes(MEMBERS)
    cfg, archive = _hand_placed(tmp_path, good, hashlib.md5(good).hexdigest())
    dest = extract_archive(cfg, "blob")
    marker = dest / ".extracted_from.json"
    stamp = yaml.safe_load(marker.read_text())
    assert stamp["md5"] == hashlib.md5(good).hexdigest()
    del stamp["md5"]  # as written before archives were verified at extraction
    marker.write_text(yaml.safe_dump(stamp))
    (dest / "set" / "file0.txt").unlink()
    extract_archive(cfg, "blob")
    assert (dest / "set" / "file0.txt").exists()


def test_tar_cut_at_a_member_boundary_is_corrupt(tmp_path):
    cut = tar_bytes(MEMBERS)[: 2 * 2048]
    (tmp_path / "cut.tar").write_bytes(cut)
    with pytest.raises(CorruptFileError, match=r"cut.tar is damaged .*end-of-archive block"):
        safe_extract(tmp_path / "cut.tar", tmp_path / "work" / "out")
    assert not (tmp_path / "work" / "out").exists() and list((tmp_path / "work").iterdir()) == []


def test_truncated_tgz_is_a_clear_error(tmp_path):
    (tmp_path / "cut.tgz").write_bytes(tar_bytes(MEMBERS, mode="w:gz")[:-40])
    with pytest.raises(CorruptFileError, match=r"cut.tgz is damaged .*download it again"):
        safe_extract(tmp_path / "cut.tgz", tmp_path / "work" / "out")
    assert list((tmp_path / "work").iterdir()) == []


def test_truncated_zip_is_a_clear_error(tmp_path):
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("a.txt", "x" * 5000)
    (tmp_path / "cut.zip").write_bytes((tmp_path / "ok.zip").read_bytes()[:-60])
    with pytest.raises(CorruptFileError, match="cut.zip is damaged"):
        safe_extract(tmp_path / "cut.zip", tmp_path / "out")


def test_chained_symlink_tar_is_refused(tmp_path):
    with tarfile.open(tmp_path / "chain.tar", "w") as tar:
        for name, target in (("d", None), ("d/up", ".."), ("d/up2", "up/..")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = (tarfile.DIRTYPE, "") if target is None else (tarfile.SYMTYPE, target)
            tar.addfile(info)
        info = tarfile.TarInfo("d/up2/evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(UnsafeArchiveError, match=r"chain.tar: member 'd/up2' would be written outside"):
        safe_extract(tmp_path / "chain.tar", tmp_path / "work" / "out")
    assert list((tmp_path / "work").iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_garbage_md5sums_line_names_file_and_line(tmp_path):
    (tmp_path / "MD5SUMS").write_text(f"{'a' * 32}  good.tar\n<html>oops</html>\n")
    with pytest.raises(DownloadError, match=r"MD5SUMS, line 2: not an `md5sum` line"):
        read_md5sums(str(tmp_path))


# --- clear errors: HTTP mirror, disk full, corrupt labels ------------------------------------
class _ErrorMirror(LoopbackServer):
    """A loopback mirror answering every request with `status`."""

    def __init__(self, status: int):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_error(status)

        super().__init__(Handler)
        self.start()


def test_http_500_from_the_mirror_is_a_clear_error_and_keeps_nothing(tmp_path):
    mirror = _ErrorMirror(500)
    try:
        cfg = _cfg(tmp_path, mirror=mirror.url,
                   archives={"blob": {"url": None, "filename": "blob.bin", "md5": "0" * 32}})
        with pytest.raises(DownloadError, match=r"giving up after 2 attempts: .*HTTP 500") as info:
            fetch_archive(cfg, "blob")
        assert "partial file" not in str(info.value) and "nothing was kept" in str(info.value)
        assert not (tmp_path / "data" / "archives").exists() or not any(
            (tmp_path / "data" / "archives").iterdir())
        cfg = _cfg(tmp_path, mirror=mirror.url, synthetic=True)  # MD5SUMS itself answers 500
        with pytest.raises(DownloadError, match=r"MD5SUMS: HTTP 500 .*after 2 attempts"):
            fetch_archive(cfg, "voc2012_trainval")
    finally:
        mirror.close()


class _NoSpaceFile:
    """An open file whose writes fail with ENOSPC once `limit` bytes are in."""

    def __init__(self, handle, limit: int):
        self.handle, self.limit = handle, limit

    def write(self, data: bytes) -> int:
        if self.handle.tell() + len(data) > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_disk_full_during_download(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 100
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "blob.bin").write_bytes(payload)
    spec = {"url": None, "filename": "blob.bin", "md5": hashlib.md5(payload).hexdigest()}
    cfg = _cfg(tmp_path, mirror=str(tmp_path / "mirror"), archives={"blob": spec})
    monkeypatch.setattr(download_module, "open", lambda path, mode="r": (
        _NoSpaceFile(open(path, mode), 10000) if "a" in mode or "w" in mode else open(path, mode)),
        raising=False)
    part = tmp_path / "data" / "archives" / "blob.bin.part"
    with pytest.raises(NoSpaceError, match=f"no space left on device .* writing {part}") as info:
        fetch_archive(cfg, "blob")
    assert "is kept and resumed" in str(info.value) and part.stat().st_size <= 10000
    assert not (tmp_path / "data" / "archives" / "blob.bin").exists()
    monkeypatch.undo()
    assert fetch_archive(cfg, "blob").read_bytes() == payload  # resumed after space was freed


def test_atomic_path_translates_no_space(tmp_path):
    target = tmp_path / "out" / "checkpoint.pt"
    with pytest.raises(NoSpaceError, match=f"no space left on device .* writing {target}") as info:
        with atomic_path(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert list(target.parent.iterdir()) == []  # no temp, no target


def test_torch_save_enforce_fail_is_reported_as_no_space(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    torch_error = "[enforce fail at inline_container.cc:595] . unexpected pos 4480 vs 4378"
    monkeypatch.setattr("lc.data.io.disk_full", lambda directory: True)
    with pytest.raises(NoSpaceError, match=f"no space left on device .* writing {target}"):
        with atomic_path(target):
            raise RuntimeError(torch_error)
    monkeypatch.setattr("lc.data.io.disk_full", lambda directory: False)
    with pytest.raises(RuntimeError, match="inline_container"):  # not a full disk: the error as it was
        with atomic_path(target):
            raise RuntimeError(torch_error)
    assert list(tmp_path.iterdir()) == []
    assert disk_full(tmp_path) is False  # the probe itself, on a disk with space


def test_read_errors_name_the_label_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 21, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    for name, data in (("cut.png", buffer.getvalue()[: len(buffer.getvalue()) // 2]),
                       ("garbage.png", b"\x89PNG not at all")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CorruptFileError, match=f"{name}: not a readable image .*truncated or damaged"):
            read_voc_label(tmp_path / name)
        with pytest.raises(CorruptFileError, match=f"{name}: .*lc prepare"):
            read_index_png(tmp_path / name)


# --- prepare: markers, interruption, consistency ------------------------------------------------
@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    make_synthetic_mirror(load_config(CONFIG, preset="test", overrides={"data": {"mirror": str(root)}}))
    return root


def _prepared(tmp_path: Path, mirror: Path, datasets=("voc",)) -> dict:
    cfg = load_config(CONFIG, preset="test", overrides={"data": {"root": str(tmp_path / "data"),
                                                                 "mirror": str(mirror)}})
    keys = {"voc": ("voc2012_trainval", "sbd", "voc2012_test"),
            "cityscapes": ("cityscapes_gtfine", "cityscapes_leftimg8bit")}
    for dataset in datasets:
        for key in keys[dataset]:
            fetch_archive(cfg, key)
        (prepare_voc if dataset == "voc" else prepare_cityscapes)(cfg)
    return cfg


def test_failed_reprepare_leaves_no_prepared_marker(tmp_path, mirror):
    cfg = _prepared(tmp_path, mirror)
    lists = prepared_list_files(cfg, "voc")
    assert all(p.exists() for p in lists.values())
    archive = tmp_path / "data" / "archives" / cfg["data"]["archives"]["voc2012_trainval"]["filename"]
    archive.write_bytes(archive.read_bytes()[:-4096])  # damaged by hand
    with pytest.raises(ChecksumError):
        prepare_voc(cfg)
    assert [p for p in lists.values() if p.exists()] == []


def test_empty_split_fails_prepare(tmp_path, mirror):
    cfg = _prepared(tmp_path, mirror)
    voc = tmp_path / "data" / "raw" / "voc2012_trainval" / "VOCdevkit" / "VOC2012"
    val = voc / "ImageSets" / "Segmentation"
    (val / "val.txt").write_text("")
    with pytest.raises(DataError, match="VOC val split is empty"):
        prepare_voc(cfg)
    assert not any(p.exists() for p in prepared_list_files(cfg, "voc").values())


def test_cityscapes_label_size_must_match_the_image(tmp_path, mirror):
    cfg = _prepared(tmp_path, mirror, ("cityscapes",))
    gt_val = tmp_path / "data" / "raw" / "cityscapes_gtfine" / "gtFine" / "val"
    label = next(gt_val.glob("*/*_labelIds.png"))
    ids = np.asarray(Image.open(label))
    Image.fromarray(ids[:-2]).save(label)
    with pytest.raises(DataError, match=f"{label.name}: label size .* differs from image"):
        prepare_cityscapes(cfg)
    assert not any(p.exists() for p in prepared_list_files(cfg, "cityscapes").values())


def test_disk_full_during_prepare_names_the_file(tmp_path, mirror, monkeypatch, capfd):
    cfg = _prepared(tmp_path, mirror)
    real_write = Path.write_bytes

    def write_bytes(self, data):
        if self.name.endswith(".tmp") and ".lc-" in self.name and self.parent.name == "SegmentationClassAug":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    config = _cli_config(tmp_path, root=str(tmp_path / "data"), mirror=str(mirror), synthetic=True)
    capfd.readouterr()
    assert lc_main(["prepare", "voc", "--config", str(config), "--preset", "test"]) == 2
    err = capfd.readouterr().err
    assert "no space left on device" in err and "SegmentationClassAug" in err and "Traceback" not in err
    assert not any(p.exists() for p in prepared_list_files(cfg, "voc").values())
    labels = tmp_path / "data" / "voc_aug" / "SegmentationClassAug"
    assert not list(labels.glob(".*.tmp"))


def test_temp_left_by_sigkill_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "labels" / "2007_000001.png"
    script = ("import os, signal, sys\nfrom lc.data.io import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script, str(target)], env=env, check=False)
    assert result.returncode == -signal.SIGKILL
    leftovers = list(target.parent.glob(".*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 0 and ".lc-" in leftovers[0].name
    host = leftovers[0].name.split(".lc-")[1].split("-")[0]
    live = target.parent / f".{target.name}.lc-{host}-{os.getppid()}-x.tmp"
    live.write_bytes(b"")  # a temp of a live process is not touched
    write_text_atomic(target, "done")
    assert target.read_text() == "done"
    assert sorted(target.parent.iterdir()) == sorted([target, live])


def test_extraction_temp_left_by_a_killed_run_is_removed(tmp_path):
    good = tar_bytes(MEMBERS)
    cfg, _ = _hand_placed(tmp_path, good, hashlib.md5(good).hexdigest())
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)  # a process that has exited
    raw = tmp_path / "data" / "raw"
    prefix = temp_prefix(raw / "blob.staging").replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    stale = raw / f"{prefix}abc.tmp"
    (stale / "set").mkdir(parents=True)
    (stale / "set" / "half.txt").write_bytes(b"")
    extract_archive(cfg, "blob")
    assert not stale.exists() and sorted(p.name for p in raw.iterdir()) == ["blob"]


def test_weights_path_is_under_data_root(tmp_path):
    cfg = _cfg(tmp_path)
    assert weights_path(cfg) == tmp_path / "data" / "weights" / "inception_resnet_v2.pth"
