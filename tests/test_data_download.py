"""Downloads: loopback HTTP (Range, resume, retry), folder mirror, checksums, Cityscapes credentials."""

from __future__ import annotations

import hashlib
import http.server
from pathlib import Path

import pytest
from helpers import LoopbackServer

from lc.config import load_config
from lc.data.download import (
    ChecksumError,
    CredentialsError,
    DownloadError,
    cityscapes_credentials,
    fetch_archive,
)

CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
PAYLOAD = bytes(range(256)) * 400  # 100 KiB, several chunks


class _Server(LoopbackServer):
    """A loopback HTTP server with Range support that can cut the first response short."""

    def __init__(self, files: dict[str, bytes], truncate_first: int = 0):
        self.files = files
        self.truncate_first = truncate_first
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                range_header = self.headers.get("Range")
                if range_header:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if server.truncate_first:
                    body, server.truncate_first = body[: server.truncate_first], 0
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        super().__init__(Handler)


def _cfg(tmp_path: Path, url: str | None = None, md5: str | None = None, mirror: str | None = None,
         synthetic: bool = False) -> dict:
    overrides = {"data": {"root": str(tmp_path / "data"), "mirror": mirror, "synthetic": synthetic,
                          "download": {"retries": 2, "backoff_s": 0.01, "timeout_s": 10, "chunk_bytes": 4096},
                          "archives": {"blob": {"url": url, "filename": "blob.bin", "md5": md5}}}}
    return load_config(CONFIG, preset="test", overrides=overrides)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _leftovers(directory: Path) -> list[str]:
    """Files in `directory`, less the verified-digest sidecars (.<name>.md5.json)."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".md5.json"))


def test_http_download_verifies_and_is_not_fetched_twice(tmp_path):
    with _Server({"blob.bin": PAYLOAD}) as server:
        cfg = _cfg(tmp_path, url=f"{server.url}/blob.bin", md5=_md5(PAYLOAD))
        out = fetch_archive(cfg, "blob")
        assert out == tmp_path / "data" / "archives" / "blob.bin"
        assert out.read_bytes() == PAYLOAD
        assert _leftovers(out.parent) == ["blob.bin"]
        assert (out.parent / ".blob.bin.md5.json").exists()  # the verified digest, cached by size and mtime
        fetch_archive(cfg, "blob")
        assert len(server.requests) == 1  # already present and verified: no second request


def test_http_mirror_with_md5sums_replaces_public_host(tmp_path):
    files = {"blob.bin": PAYLOAD, "MD5SUMS": f"{_md5(PAYLOAD)}  blob.bin\n".encode()}
    with _Server(files) as server:
        cfg = _cfg(tmp_path, url="http://unreachable.invalid/blob.bin", mirror=server.url, synthetic=True)
        out = fetch_archive(cfg, "blob", tmp_path / "elsewhere" / "b.bin")
        assert out.read_bytes() == PAYLOAD
        assert ("/blob.bin", None) in server.requests


def test_resume_partial_download_with_range(tmp_path):
    with _Server({"blob.bin": PAYLOAD}) as server:
        cfg = _cfg(tmp_path, url=f"{server.url}/blob.bin", md5=_md5(PAYLOAD))
        part = tmp_path / "data" / "archives" / "blob.bin.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(PAYLOAD[:30000])
        out = fetch_archive(cfg, "blob")
        assert server.requests == [("/blob.bin", "bytes=30000-")]
        assert out.read_bytes() == PAYLOAD
        assert not part.exists()


def test_connection_cut_is_retried_and_resumed(tmp_path):
    with _Server({"blob.bin": PAYLOAD}, truncate_first=10000) as server:
        cfg = _cfg(tmp_path, url=f"{server.url}/blob.bin", md5=_md5(PAYLOAD))
        out = fetch_archive(cfg, "blob")
        assert out.read_bytes() == PAYLOAD
        assert server.requests[0][1] is None
        # resumed from what had reached the disk (whole chunks of the cut response), not from zero
        resumed_at = int(server.requests[-1][1].removeprefix("bytes=").rstrip("-"))
        assert 0 < resumed_at <= 10000


def test_checksum_mismatch_deletes_file_and_names_both_digests(tmp_path):
    wrong = "0" * 32
    with _Server({"blob.bin": PAYLOAD}) as server:
        cfg = _cfg(tmp_path, url=f"{server.url}/blob.bin", md5=wrong)
        with pytest.raises(ChecksumError) as info:
            fetch_archive(cfg, "blob")
    assert wrong in str(info.value) and _md5(PAYLOAD) in str(info.value)
    assert _leftovers(tmp_path / "data" / "archives") == []


def test_missing_http_file_is_a_clear_error(tmp_path):
    with _Server({}) as server:
        cfg = _cfg(tmp_path, url=f"{server.url}/blob.bin", md5=_md5(PAYLOAD))
        with pytest.raises(DownloadError, match="404"):
            fetch_archive(cfg, "blob")
    assert not (tmp_path / "data" / "archives" / "blob.bin").exists()


def test_folder_mirror_copy_and_resume(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "blob.bin").write_bytes(PAYLOAD)
    cfg = _cfg(tmp_path, md5=_md5(PAYLOAD), mirror=str(mirror))
    part = tmp_path / "data" / "archives" / "blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:5000])
    assert fetch_archive(cfg, "blob").read_bytes() == PAYLOAD
    assert _leftovers(part.parent) == ["blob.bin"]


def test_folder_mirror_missing_file(tmp_path):
    (tmp_path / "mirror").mkdir()
    cfg = _cfg(tmp_path, md5=_md5(PAYLOAD), mirror=str(tmp_path / "mirror"))
    with pytest.raises(DownloadError, match="not in the mirror folder"):
        fetch_archive(cfg, "blob")


def test_no_digest_anywhere_is_refused(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "blob.bin").write_bytes(PAYLOAD)
    with pytest.raises(DownloadError, match="no MD5 known for blob.bin"):
        fetch_archive(_cfg(tmp_path, mirror=str(mirror)), "blob")
    with pytest.raises(DownloadError, match="lc synth"):  # synthetic presets need the mirror's MD5SUMS
        fetch_archive(_cfg(tmp_path, md5=_md5(PAYLOAD), mirror=str(mirror), synthetic=True), "blob")
    assert _leftovers(tmp_path / "data" / "archives") == []


def _no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("CITYSCAPES_USERNAME", raising=False)
    monkeypatch.delenv("CITYSCAPES_PASSWORD", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # no cityscapesscripts stored credentials


def test_missing_cityscapes_credentials_message(tmp_path, monkeypatch):
    _no_credentials(monkeypatch, tmp_path)
    cfg = _cfg(tmp_path)
    with pytest.raises(CredentialsError) as info:
        fetch_archive(cfg, "cityscapes_gtfine")
    message = str(info.value)
    assert "CITYSCAPES_USERNAME" in message and "CITYSCAPES_PASSWORD" in message
    assert "machine www.cityscapes-dataset.com" in message and "data.mirror" in message
    assert _leftovers(tmp_path / "data" / "archives") == []


def test_cityscapes_credentials_from_netrc_and_env(tmp_path, monkeypatch):
    _no_credentials(monkeypatch, tmp_path)
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine www.cityscapes-dataset.com login alice password s3cret\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    found = cityscapes_credentials()
    assert (found.user, found.password, found.source) == ("alice", "s3cret", str(netrc_file))
    assert "s3cret" not in repr(found)
    monkeypatch.setenv("CITYSCAPES_USERNAME", "bob")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", "hunter2")
    found = cityscapes_credentials()
    assert (found.user, found.password) == ("bob", "hunter2") and "CITYSCAPES_USERNAME" in found.source


def test_file_placed_by_hand_is_used_without_a_url(tmp_path):
    # e.g. VOC2012test.tar, which only the evaluation server hands out: no url, md5 set in config
    cfg = _cfg(tmp_path, md5=_md5(PAYLOAD))
    out = tmp_path / "data" / "archives" / "blob.bin"
    out.parent.mkdir(parents=True)
    out.write_bytes(PAYLOAD)
    assert fetch_archive(cfg, "blob") == out
    out.write_bytes(PAYLOAD[:-1])  # a wrong file is deleted, and with no source the error says what to do
    with pytest.raises(DownloadError, match="has no public URL: place it in data.mirror"):
        fetch_archive(cfg, "blob")
    assert not out.exists()
