"""Fault injection: a training run SIGKILLed at random points, some of them inside a checkpoint
write, and resumed each time, ends with the weights of an uninterrupted run, bit for bit.

Each attempt is a separate (forked) process killed with SIGKILL, as a cluster's OOM killer or time
limit would; checkpoint writes are interrupted through lc.training.checkpoint's FAULT_KILL_ON_SAVE
hook, which truncates the half-written temporary file before the kill.
"""

from __future__ import annotations

import copy
import csv
import multiprocessing
import os
import random
import signal
import sys
import time

import pytest
import torch

from lc.training.checkpoint import FAULT_KILL_ON_SAVE, load_checkpoint
from lc.training.loop import total_iterations, train

_FORK = "fork" in multiprocessing.get_all_start_methods()
pytestmark = pytest.mark.skipif(sys.platform == "win32" or not _FORK, reason="needs fork and SIGKILL")
VARIANT = "mc"  # three networks in turn: member boundaries, optimizer swaps and routing all get killed
KILLS = 5


def _child(cfg: dict, out: str, kill_on_save: int | None) -> None:
    torch.set_num_threads(1)
    if kill_on_save is not None:
        os.environ[FAULT_KILL_ON_SAVE] = str(kill_on_save)
    train(cfg, "voc", VARIANT, out, device="cpu")
    os._exit(0)


def _logged_iteration(out) -> int:
    try:
        with open(out / "train_log.csv", newline="") as handle:
            return max((int(row["iteration"]) for row in csv.DictReader(handle)), default=0)
    except (OSError, ValueError, KeyError):
        return 0


def _attempt(cfg: dict, out, kill_on_save: int | None = None, kill_at: int | None = None,
             delay_s: float = 0.0) -> int | None:
    """Run training in a fresh process; kill it when it has logged `kill_at` (after `delay_s`)."""
    process = multiprocessing.get_context("fork").Process(target=_child, args=(cfg, str(out), kill_on_save))
    process.start()
    if kill_at is not None:
        deadline = time.monotonic() + 120
        while process.is_alive() and _logged_iteration(out) < kill_at and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay_s)
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=300)
    return process.exitcode


def _checkpointed(out) -> int:
    path = out / "resume.pt"
    return int(load_checkpoint(path)["iteration"]) if path.exists() else 0


def test_sigkilled_training_resumes_to_the_identical_model(prepared_test_cfg, tmp_path):
    cfg = copy.deepcopy(prepared_test_cfg)
    cfg["train"].update(checkpoint_every=2, log_every=1)
    total = total_iterations(cfg, VARIANT)
    assert _attempt(cfg, tmp_path / "straight") == 0

    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = []
    for k in range(KILLS):
        left = total - _checkpointed(out)
        if k % 2 == 0 or left <= 4:  # inside a checkpoint write (the 1st always exists: no progress)
            point = ("write", rng.choice([1, 2]) if left > 4 else 1)
            code = _attempt(cfg, out, kill_on_save=point[1])
        else:  # at a random moment after a random logged iteration, well before the end
            point = ("after iteration", total - left + rng.randint(1, 2), rng.uniform(0.0, 0.02))
            code = _attempt(cfg, out, kill_at=point[1], delay_s=point[2])
        assert code in (-signal.SIGKILL, 0), (point, code)
        if code == -signal.SIGKILL:
            kills.append(point)
            if (out / "train_done.json").exists():  # killed on its way out, after finishing
                assert load_checkpoint(out / "checkpoint.pt")["iteration"] == total
    assert len(kills) >= 5, kills
    assert any(p.name.endswith(".tmp") for p in out.iterdir())  # a write was really cut short
    assert _attempt(cfg, out) == 0

    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(out / "checkpoint.pt")
    assert resumed["iteration"] == straight["iteration"] == total
    assert straight["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(value, resumed["model"][key]) for key, value in straight["model"].items())
    assert (out / "train_done.json").exists() and not (out / "resume.pt").exists()
    with open(out / "train_log.csv", newline="") as handle:
        assert [int(r["iteration"]) for r in csv.DictReader(handle)] == list(range(1, total + 1))
