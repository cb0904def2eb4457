"""Fault injection: a training run SIGKILLed at random points, some of them inside a checkpoint
write, and resumed each time, ends with the weights of an uninterrupted run, bit for bit.

Each attempt is a separate (spawned) process killed with SIGKILL, as a cluster's OOM killer or time
limit would. The kill points come from hooks in the code, never from a timer: lc.training.checkpoint's
FAULT_KILL_ON_SAVE (inside the Nth checkpoint write, after truncating the half-written temporary
file) and FAULT_KILL_AFTER_ITERATION (right after iteration K's step, before its log row and checkpoint).
"""

from __future__ import annotations

import copy
import csv
import multiprocessing
import os
import random
import signal
import sys

import pytest
import torch

from lc.training.checkpoint import FAULT_KILL_AFTER_ITERATION, FAULT_KILL_ON_SAVE, load_checkpoint
from lc.training.loop import total_iterations, train

# spawn, not fork: once this pytest process has started autograd's worker threads (a test that ran
# torch.compile, then any backward), a forked child's first backward fails ("Unable to handle
# autograd's threading in combination with fork-based multiprocessing")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
VARIANT = "mc"  # three networks in turn: member boundaries, optimizer swaps and routing all get killed
KILLS = 5


def _child(cfg: dict, out: str, fault: dict[str, str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(fault)  # this child process only
    train(cfg, "voc", VARIANT, out, device="cpu")
    os._exit(0)


def _attempt(cfg: dict, out, kill_on_save: int | None = None, kill_after: int | None = None) -> int | None:
    """Run training in a fresh process, killed inside its `kill_on_save`th checkpoint write or right
    after iteration `kill_after`; its exit code."""
    fault = {}
    if kill_on_save is not None:
        fault[FAULT_KILL_ON_SAVE] = str(kill_on_save)
    if kill_after is not None:
        fault[FAULT_KILL_AFTER_ITERATION] = str(kill_after)
    process = multiprocessing.get_context("spawn").Process(target=_child, args=(cfg, str(out), fault))
    process.start()
    process.join()
    return process.exitcode


def _checkpointed(out) -> int:
    path = out / "resume.pt"
    return int(load_checkpoint(path)["iteration"]) if path.exists() else 0


@pytest.mark.slow
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
        else:  # right after a random iteration's step (1 to 3 past the checkpoint), well before the end
            point = ("after iteration", total - left + rng.randint(1, 3))
            code = _attempt(cfg, out, kill_after=point[1])
        assert code == -signal.SIGKILL, (point, code)  # every kill point lies before the end: each one hits
        kills.append(point)
        assert not (out / "train_done.json").exists()
    assert len(kills) == KILLS and any(p[0] == "after iteration" for p in kills), kills
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
