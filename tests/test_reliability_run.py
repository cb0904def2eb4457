"""Reliability, third pass (issue 21): the training run folder.

What the run trains on is digested (lists, labels, images) and a change restarts it; `--no-resume`
removes the old state before anything slow; one `lc train` per run folder at a time; `--stop-after`
names the file it wrote.
"""

from __future__ import annotations

import copy
import os
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


def test_the_lock_is_reentrant_and_released():
    """The CLI takes the lock before importing torch, and train() takes it again in the same process."""
    import tempfile

    from lc.training.run_folder import RunFolderLock

    with tempfile.TemporaryDirectory() as folder:
        with RunFolderLock(folder), RunFolderLock(folder):
            pass
        with RunFolderLock(folder) as lock:
            assert f"pid {os.getpid()}" in lock.path.read_text()


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
