"""The training log: <out>/train_log.csv and the running means written to it.

One row per train.log_every iterations (and at the end, at a stop, and when a Model Cascade member
finishes): iteration, the backbone learning rate of the last step, the mean total loss and per-stage
losses over the iterations since the previous row, the mean fraction of stride-8 pixels routed to
each stage, and the training seconds so far (summed over resumed runs). Empty: no such stage/loss.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
import torch.distributed as dist

from lc.data.io import write_text_atomic
from lc.training.distributed import DistContext

__all__ = ["LOG_COLUMNS", "MetricWindow", "TrainLog"]

LOG_COLUMNS = ("iteration", "lr", "loss", "loss_stage1", "loss_stage2", "loss_stage3",
               "pixels_stage1", "pixels_stage2", "pixels_stage3", "seconds")


class TrainLog:
    """<out>/train_log.csv, kept consistent with the checkpoint: rows after it are dropped on resume."""

    def __init__(self, path: Path, start_iteration: int):
        self.path = path
        kept: list[dict] = []
        if start_iteration > 0 and path.exists():
            with open(path, newline="") as handle:
                reader = csv.DictReader(handle)
                if tuple(reader.fieldnames or ()) != LOG_COLUMNS:
                    raise ValueError(f"{path} has columns {reader.fieldnames}, expected "
                                     f"{list(LOG_COLUMNS)}; delete the run folder or pass --no-resume")
                kept = [row for row in reader if int(row["iteration"]) <= start_iteration]
        self.last_loss = float(kept[-1]["loss"]) if kept and kept[-1]["loss"] else None
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(LOG_COLUMNS)
        writer.writerows([row[c] for c in LOG_COLUMNS] for row in kept)
        write_text_atomic(path, text.getvalue())

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as handle:
            values = ["" if row.get(c) is None else row[c] for c in LOG_COLUMNS]
            csv.writer(handle, lineterminator="\n").writerow(values)


class MetricWindow:
    """Sums of loss, stage losses and routed fractions since the last log row (on the device)."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(2, 7, device=device, dtype=torch.float64)  # values, counts

    def add(self, total: torch.Tensor, stage_loss: list, stage_fraction: list) -> None:
        for i, value in enumerate([total.detach()] + list(stage_loss) + list(stage_fraction)):
            if value is not None:
                self.sums[0, i] += value.detach().double()
                self.sums[1, i] += 1

    def means(self, ctx: DistContext) -> list[float | None]:
        sums = self.sums.clone()
        if ctx.distributed:
            dist.all_reduce(sums)
        self.sums.zero_()
        values, counts = sums.cpu().tolist()
        return [value / count if count > 0 else None for value, count in zip(values, counts, strict=True)]
