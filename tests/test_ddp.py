"""Data-parallel training: two CPU processes with the gloo backend, as torchrun would start them."""

from __future__ import annotations

import csv
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from lc.training.checkpoint import load_checkpoint
from lc.training.loop import total_iterations, train

pytestmark = pytest.mark.slow
WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _below_median_confidence(logits: torch.Tensor, rho: float) -> torch.Tensor:
    """Routing stand-in (see test_train.py): the less confident half of each image's pixels goes on."""
    with torch.no_grad():
        confidence = logits.softmax(dim=1).amax(dim=1)
        return confidence < confidence.flatten(1).median(dim=1).values.view(-1, 1, 1)


def _worker(rank: int, port: int, cfg: dict, out_dir: str, variant: str, weights_dir: str) -> None:
    import lc.models.cascade

    # partial routing in every iteration, different on each rank: stages see different pixel sets
    lc.models.cascade.undecided_mask = _below_median_confidence
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = train(cfg, "voc", variant, out_dir, device="cpu")
    assert result.world_size == WORLD_SIZE and result.rank == rank
    torch.save(result.model.state_dict(), os.path.join(weights_dir, f"rank{rank}.pt"))


def _spawn_on_a_free_port(cfg: dict, tmp_path, variant: str, attempts: int = 3):
    """Both ranks' training in a fresh run folder; a port taken between `_free_port` and the
    rendezvous (another process on a busy host) is retried on a new one."""
    for attempt in range(attempts):
        out = tmp_path / f"run{attempt}"
        try:
            mp.spawn(_worker, args=(_free_port(), cfg, str(out), variant, str(tmp_path)), nprocs=WORLD_SIZE,
                     join=True)
            return out
        except mp.ProcessRaisedException as error:
            if "address already in use" not in str(error).lower() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.mark.parametrize("variant", ["lc"])
def test_two_gloo_processes_end_with_identical_weights(prepared_test_cfg, tmp_path, variant):
    out = _spawn_on_a_free_port(prepared_test_cfg, tmp_path, variant)
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["iteration"] == total_iterations(prepared_test_cfg, variant)
    assert len(saved["rng"]) == WORLD_SIZE  # every rank's random stream, for an exact resume
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
        assert torch.equal(value, saved["model"][key]), key
    # the ranks trained on different data: the weights moved away from the shared start
    start = train(prepared_test_cfg, "voc", variant, tmp_path / "start", stop_after=0).model.state_dict()
    assert any(not torch.equal(v, saved["model"][k]) for k, v in start.items())
    done = json.loads((out / "train_done.json").read_text())
    assert done["world_size"] == WORLD_SIZE and done["iterations"] == saved["iteration"]
    with open(out / "train_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and int(rows[-1]["iteration"]) == saved["iteration"]
    assert all(0.0 < float(r["pixels_stage2"]) < 1.0 for r in rows)

