"""Reliability, third pass (issue 21): the training run folder.

What the run trains on is digested (lists, labels, images) and a change restarts it; `--no-resume`
removes the old state before anything slow; one `lc train` per run folder at a time; `--stop-after`
names the file it wrote.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lc.cli.main import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg(prepared_test_cfg):
    return copy.deepcopy(prepared_test_cfg)


def _config_file(cfg: dict, folder: Path) -> Path:
    path = folder / "config.resolved.yaml"
    path.write_text(yaml.safe_dump(dict(cfg, presets={"test": {}})))
    return path


def _train_args(config: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--preset", "test", "--dataset", "voc", "--variant", "dsn",
            "--out", str(out), *extra]


# --- 1: what the run trains on is digested; a change restarts it ---------------------------------
@pytest.fixture
def own_data(cfg, tmp_path):
    """The test preset with a private copy of the prepared data (the tests below rewrite it)."""
    local = copy.deepcopy(cfg)
    local["data"]["root"] = str(tmp_path / "data")
    shutil.copytree(cfg["data"]["root"], local["data"]["root"], ignore=shutil.ignore_patterns("archives"))
    return local


def _labels(cfg: dict) -> list[Path]:
    from lc.data.io import read_sample_list
    from lc.data.paths import data_root, prepared_list_files

    rows = read_sample_list(prepared_list_files(cfg, "voc")["train"])
    return [data_root(cfg) / row[2] for row in rows]


def test_relabelled_data_restarts_the_run_with_the_reason(own_data, tmp_path, caplog):
    """Every label PNG rewritten (a re-prepare with other data), the list file left as it is."""
    from lc.data.io import read_index_png, write_voc_label_png
    from lc.training.checkpoint import load_checkpoint
    from lc.training.loop import train

    out = tmp_path / "run"
    train(own_data, "voc", "dsn", out, stop_after=2)
    stored = load_checkpoint(out / "resume.pt")["inputs"]
    for label in _labels(own_data):
        write_voc_label_png(label, 20 - read_index_png(label).clip(0, 20))  # other classes, same files
    caplog.set_level("INFO", logger="lc")
    result = train(own_data, "voc", "dsn", out, stop_after=3)
    assert f"resuming from {out / 'resume.pt'} at iteration" not in caplog.text
    assert "not resuming from" in caplog.text and "the training data (the list, its images and labels) " \
        "changed" in caplog.text
    assert result.iterations == 3 and result.checkpoint == out / "resume.pt"
    inputs = load_checkpoint(out / "resume.pt")["inputs"]
    assert inputs["train_data"] != stored["train_data"] and inputs["train_list"] == stored["train_list"]


def test_data_digest_hashes_only_what_changed(own_data, monkeypatch, caplog):
    from lc.data.digest_cache import data_digest
    from lc.data.io import hash_file
    from lc.data.paths import data_root, prepared_list_files

    root, train_list = data_root(own_data), prepared_list_files(own_data, "voc")["train"]
    first = data_digest(root, train_list)
    hashed = []
    monkeypatch.setattr("lc.data.digest_cache.hash_file",
                        lambda path, algorithm: hashed.append(Path(path)) or hash_file(path, algorithm))
    assert data_digest(root, train_list) == first and hashed == [train_list]  # only the list itself
    monkeypatch.undo()
    image = root / next(iter(_image_names(train_list)))
    image.write_bytes(image.read_bytes() + b"\0")  # edited by hand
    caplog.set_level("INFO", logger="lc.data")
    assert data_digest(root, train_list) != first
    assert "1 of" in caplog.text and image.name in caplog.text


def _image_names(train_list: Path) -> list[str]:
    from lc.data.io import read_sample_list

    return [row[1] for row in read_sample_list(train_list)]


# --- 2: --no-resume removes the old state before anything slow ----------------------------------
def test_no_resume_removes_the_state_before_reading_the_config(tmp_path, capsys):
    """Killed (here: stopped by a config it cannot read) before training: no old model looks done."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "resume.pt", "train_done.json"):
        (out / name).write_text("old")
    rc = main(_train_args(tmp_path / "missing.yaml", out, "--no-resume"))
    assert rc == 2 and "missing.yaml not found" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".train.lock"]


def test_no_resume_removes_the_state_before_any_slow_import(tmp_path):
    """`lc` / `python -m lc.cli` enter through lc.cli.entry: the state is gone before numpy, pandas,
    matplotlib, torch or the config are loaded (seconds on a busy machine, where a kill leaves an old
    model looking done)."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "resume.pt", "train_done.json", "train_log.csv"):
        (out / name).write_text("old")
    code = ("import sys; from lc.cli.entry import early_no_resume; "
            f"lock = early_no_resume(['train', '--dataset', 'voc', '--out', {str(out)!r}, '--no-resume']); "
            "print(lock is not None, sorted(m for m in ('numpy', 'pandas', 'matplotlib', 'torch', 'yaml') "
            "if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.stdout.strip() == "True []", result.stderr
    assert sorted(p.name for p in out.iterdir()) == [".train.lock", "train_log.csv"]
    assert "--no-resume: removed" in result.stderr


def test_the_lc_command_enters_through_the_light_entry_point():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lc"] == "lc.cli.entry:run"
    assert "from lc.cli.entry import run" in (REPO / "lc" / "cli" / "__main__.py").read_text()


# --- 4: one `lc train` per run folder -----------------------------------------------------------
@pytest.fixture
def held_lock(tmp_path):
    """Another process holding the run folder's lock until the test ends; yields (folder, its PID)."""
    out = tmp_path / "run"
    code = ("import sys; from lc.training.run_folder import RunFolderLock; "
            f"RunFolderLock({str(out)!r}).acquire(); print('locked', flush=True); sys.stdin.read()")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield out, holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_second_training_in_the_same_folder_stops_naming_the_holder(cfg, tmp_path, held_lock, capsys):
    from lc.training.loop import train
    from lc.training.run_folder import RunLockedError

    out, pid = held_lock
    with pytest.raises(RunLockedError, match=f"another `lc train` \\(pid {pid} on "):
        train(cfg, "voc", "dsn", out, stop_after=1)
    assert sorted(p.name for p in out.iterdir()) == [".train.lock"]  # nothing written, nothing removed
    (out / "checkpoint.pt").write_text("the holder's")
    rc = main(_train_args(_config_file(cfg, tmp_path), out, "--no-resume"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and f"pid {pid}" in err and "Traceback" not in err
    assert (out / "checkpoint.pt").read_text() == "the holder's"  # --no-resume did not touch its files


def test_the_lock_is_reentrant_and_released(tmp_path):
    """The CLI takes the lock before importing torch, and train() takes it again in the same process;
    once released, another process gets it."""
    from lc.training.run_folder import RunFolderLock

    with RunFolderLock(tmp_path), RunFolderLock(tmp_path) as inner:
        assert f"pid {os.getpid()}" in inner.path.read_text()
    code = ("from lc.training.run_folder import RunFolderLock; "
            f"RunFolderLock({str(tmp_path)!r}).acquire(); print('locked')")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert other.stdout.strip() == "locked", other.stderr


# --- unclear: --stop-after prints the file it wrote ---------------------------------------------
def test_stop_after_prints_the_file_it_wrote(cfg, tmp_path, capsys):
    config = _config_file(cfg, tmp_path)
    out = tmp_path / "run"
    assert main(_train_args(config, out, "--stop-after", "1")) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.split(", ")[-1].startswith(str(out / "resume.pt"))
    assert "run the same command again" in printed
    assert (out / "resume.pt").exists() and not (out / "checkpoint.pt").exists()
    assert main(_train_args(config, out)) == 0
    assert capsys.readouterr().out.strip().endswith(str(out / "checkpoint.pt"))
