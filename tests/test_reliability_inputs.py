"""Reliability, third pass (issue 21): inputs and outputs a hostile tester broke.

Archives read to the end of their compressed stream, a full disk inside torch.save, a read-only
output folder, a netrc error on another host's line, duplicate YAML keys, `lc prepare --verify`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from helpers import TAR_MEMBERS as MEMBERS
from helpers import copy_repo, tar_bytes

from lc.data.errors import CorruptFileError, NoSpaceError
from lc.data.extract import safe_extract


# --- 5: a .tgz is read to the end of its gzip stream --------------------------------------------
@pytest.mark.parametrize("damage", ["no_trailer", "bad_crc"])
def test_tgz_without_its_gzip_trailer_is_refused(tmp_path, damage):
    """Every member is complete, but the gzip trailer (CRC-32 and length) is missing or wrong."""
    good = tar_bytes(MEMBERS, "w:gz")
    bad = good[:-8] if damage == "no_trailer" else good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:]
    (tmp_path / "cut.tgz").write_bytes(bad)
    with pytest.raises(CorruptFileError, match=r"cut.tgz is damaged .*download it again"):
        safe_extract(tmp_path / "cut.tgz", tmp_path / "work" / "out")
    assert list((tmp_path / "work").iterdir()) == []
    (tmp_path / "good.tgz").write_bytes(good)
    out = safe_extract(tmp_path / "good.tgz", tmp_path / "work" / "good")
    assert (out / "set" / "file3.txt").read_bytes() == MEMBERS["set/file3.txt"]


# --- 3: a full disk inside torch.save -------------------------------------------------------------
TORCH_ERROR = "[enforce fail at inline_container.cc:672] . unexpected pos 252032 vs 251928"


def _full_while_a_temp_exists(directory) -> bool:
    """Disk usage as a tiny tmpfs reports it: full while the partial checkpoint holds its space."""
    return any(p.name.endswith(".tmp") for p in Path(directory).iterdir())


def test_disk_full_inside_torch_save_names_mount_and_file(tmp_path, monkeypatch):
    from lc.data.io import mount_point
    from lc.training.checkpoint import save_checkpoint

    def failing_save(obj, handle):
        handle.write(b"\0" * 4096)
        handle.flush()
        raise RuntimeError(TORCH_ERROR)

    monkeypatch.setattr("lc.training.checkpoint.torch.save", failing_save)
    monkeypatch.setattr("lc.data.io.disk_full", _full_while_a_temp_exists)
    target = tmp_path / "run" / "resume.pt"
    with pytest.raises(NoSpaceError) as info:
        save_checkpoint(target, {"iteration": 1})
    message = str(info.value)
    assert message.startswith(f"no space left on device {mount_point(target)} writing {target};")
    assert "\n" not in message
    assert list(target.parent.iterdir()) == []  # the partial temp is gone, no target


def test_no_space_is_found_anywhere_in_the_chain(tmp_path, monkeypatch):
    """torch's "unexpected pos" error wrapping the ENOSPC of the write under it."""
    from lc.data.io import is_no_space

    monkeypatch.setattr("lc.data.io.disk_full", lambda directory: False)
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError(TORCH_ERROR)  # noqa: B904 (an implicit chain, as torch's C++ leaves it)
    except RuntimeError as exc:
        assert is_no_space(exc, tmp_path)
    assert not is_no_space(RuntimeError(TORCH_ERROR), tmp_path)


# --- unclear: a read-only output folder is one line, rc 2 ----------------------------------------
REPO = Path(__file__).resolve().parents[1]


def _read_only(path: str):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return refuse


@pytest.mark.parametrize("command, library_call", [
    (["train", "--dataset", "voc", "--variant", "dsn", "--out", "{out}"],
     "lc.training.run_folder.RunFolderLock.acquire"),
    (["evaluate", "--checkpoint", "c.pt", "--dataset", "voc", "--split", "val", "--out", "{out}"],
     "lc.evaluation.evaluate.run_evaluation"),
    (["download", "voc2012_trainval", "--out", "{out}"], "lc.data.download.fetch_archive"),
])
def test_read_only_output_folder_is_one_line(command, library_call, tmp_path, monkeypatch, capsys):
    """The file system refuses the write (EROFS, as a read-only mount does): no traceback, rc 2."""
    from lc.cli.main import main

    out = str(tmp_path / "ro" / "target")
    monkeypatch.setattr(library_call, _read_only(out))
    argv = [part.replace("{out}", out) for part in command]
    rc = main([*argv, "--config", str(REPO / "config.yaml"), "--preset", "test"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith(f"lc {command[0]}: error: cannot write {out}: Read-only file system; make that "
                          "folder writable")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through missing permissions")
def test_unwritable_run_folder_is_one_line(tmp_path, capsys):
    from lc.cli.main import main

    parent = tmp_path / "locked"
    parent.mkdir(mode=0o500)
    try:
        rc = main(["train", "--dataset", "voc", "--variant", "dsn", "--out", str(parent / "run"),
                   "--config", str(REPO / "config.yaml"), "--preset", "test"])
    finally:
        parent.chmod(0o700)
    assert rc == 2 and f"cannot write {parent / 'run'}" in capsys.readouterr().err


# --- unclear: a netrc error on another host's line names that line --------------------------------
CANARY = "Canary-Pw-93kx"


@pytest.mark.parametrize("bad_line", [
    "machine example.org login bob password",  # the value is missing: netrc stops on the next line
    "machine example.org login bob password x account",
    f"machine example.org login bob {CANARY}",
])
def test_netrc_error_names_the_bad_line_not_the_next_one(bad_line, tmp_path, monkeypatch):
    from lc.data.credentials import cityscapes_credentials
    from lc.data.errors import CredentialsError

    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(f"{bad_line}\nmachine www.cityscapes-dataset.com login alice password {CANARY}\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    for name in ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CredentialsError) as info:
        cityscapes_credentials()
    assert f"{netrc_file}, line 1: cannot parse" in str(info.value)
    assert CANARY not in str(info.value) and info.value.__cause__ is None and info.value.__context__ is None


# --- unclear: a key given twice in a YAML config is refused ---------------------------------------
def test_duplicate_yaml_key_is_refused_naming_key_and_line(tmp_path):
    from lc.config import ConfigError, load_config

    config = tmp_path / "my.yaml"
    config.write_text((REPO / "config.yaml").read_text() + "\nseed: 2\n")  # config.yaml sets it already
    lines = config.read_text().splitlines()
    first = lines.index(next(line for line in lines if line.startswith("seed:"))) + 1
    with pytest.raises(ConfigError) as info:
        load_config(config, preset="test")
    message = str(info.value)
    assert message.startswith(f"{config}, line {len(lines)}: key 'seed' is given twice")
    assert f"also at line {first})" in message and "\n" not in message
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"nested.yaml, line 4: key 'lr' is given twice .*also at line 2"):
        load_config(nested)
    merged = tmp_path / "merged.yaml"  # a YAML merge key may still be overridden
    merged.write_text("base: &b {lr: 1}\nother:\n  <<: *b\n  lr: 2\n")
    from lc.config import read_raw_config

    assert read_raw_config(merged)["other"] == {"lr": 2}


# --- unclear: a dry-run writes nothing ------------------------------------------------------------
def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and ".snakemake" not in p.parts and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    """A copy of the workflow (Snakefile, config, rules, package) that Snakemake may run in."""
    return copy_repo(tmp_path_factory.mktemp("repo"))


def _snakemake(work: Path, *args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", *args], cwd=work,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_dry_run_writes_nothing(workflow_copy, tmp_path):
    work = workflow_copy
    before = _files(work)
    results = tmp_path / "nonexistent" / "x"
    command = ["--config", "preset=test", f"results_root={results}"]
    result = _snakemake(work, *command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (tmp_path / "nonexistent").exists() and _files(work) == before  # nothing is written ...
    assert "resolved_config" in result.stdout  # ... and the file a real run writes is listed
    # the paper preset's prepare jobs hash every archive again (synthetic data: the cache is enough)
    prepare = _prepare_commands(result.stdout)
    assert prepare and not any("--verify" in c for c in prepare)
    command[command.index("preset=test")] = "preset=paper"
    paper = _snakemake(work, *command)
    assert paper.returncode == 0, paper.stdout[-3000:] + paper.stderr[-3000:]
    assert len(_prepare_commands(paper.stdout)) == 2
    assert all(" prepare voc --verify " in c or " prepare cityscapes --verify " in c
               for c in _prepare_commands(paper.stdout))


@pytest.mark.slow
def test_snakemake_configfile_with_a_duplicate_key_is_refused(workflow_copy, tmp_path):
    """Snakemake's own YAML loader keeps the last value; the workflow reads the file again with ours."""
    override = tmp_path / "dup.yaml"
    override.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    result = _snakemake(workflow_copy, "--configfile", str(override), "--config", "preset=test")
    assert result.returncode != 0
    assert f"{override}, line 3: key 'lr' is given twice" in result.stdout + result.stderr


def _prepare_commands(dry_run_output: str) -> list[str]:
    return [line for line in dry_run_output.splitlines() if "lc.cli prepare " in line]


def test_prepare_verify_rehashes_an_archive_damaged_in_place(tmp_path, monkeypatch):
    """Damaged in place with its size and mtime restored: the digest cache trusts it, --verify does not."""
    import hashlib
    import shutil

    from lc.config import load_config
    from lc.data.errors import ChecksumError
    from lc.data.extract import extract_archive

    good = tar_bytes(MEMBERS)  # a plain tar: no CRC of its own
    cfg = load_config(REPO / "config.yaml", preset="test", overrides={"data": {
        "root": str(tmp_path / "data"), "mirror": None, "synthetic": False,
        "archives": {"blob": {"url": None, "filename": "blob.tar", "md5": hashlib.md5(good).hexdigest()}}}})
    archive = tmp_path / "data" / "archives" / "blob.tar"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(good)
    extract_archive(cfg, "blob")
    stat = archive.stat()
    damaged = bytearray(good)
    damaged[512 + 10] ^= 0xFF  # inside the first member's data
    archive.write_bytes(bytes(damaged))
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    shutil.rmtree(tmp_path / "data" / "raw")
    extracted = extract_archive(cfg, "blob")  # the size+mtime cache trusts it (documented) ...
    assert (extracted / "set" / "file0.txt").read_bytes() != MEMBERS["set/file0.txt"]
    with pytest.raises(ChecksumError, match=r"blob.tar: MD5 .* differs"):  # ... --verify not
        extract_archive(cfg, "blob", verify=True)
    assert not archive.exists()

    from lc.cli.main import main

    seen = []
    monkeypatch.setattr("lc.data.voc.prepare_voc", lambda cfg, verify=False: seen.append(verify) or {})
    config = str(REPO / "config.yaml")
    assert main(["prepare", "voc", "--verify", "--config", config, "--preset", "test"]) == 0
    assert seen == [True]
