"""The training log: <out>/train_log.csv and the running means written to it.

One row per train.log_every iterations (and at the end, at a stop, and when a Model Cascade member
finishes): iteration, the backbone learning rate of the last step, the mean total loss and per-stage
losses over the iterations since the previous row, the mean fraction of stride-8 pixels routed to
each stage, and the training seconds so far (summed over resumed runs). Empty: no such stage/loss.

Progress on the console (`Progress`): a tqdm bar when stderr is a terminal, otherwise one plain
logging line per log row (loss per stage, learning rate, iterations per second), which reads well in
Snakemake and cluster log files.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from lc.data.io import write_text_atomic
from lc.training.distributed import DistContext

__all__ = ["LOG_COLUMNS", "MetricWindow", "Progress", "TrainLog"]

log = logging.getLogger(__name__)

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


class Progress:
    """The console view of training: tqdm on a terminal, else a log line per `row` (main process only)."""

    def __init__(self, name: str, total: int, initial: int, enabled: bool):
        self.name, self.total, self.enabled = name, total, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=f"train {name}", unit="it", file=sys.stderr,
                            dynamic_ncols=True)
        self.last_iteration, self.last_time = initial, time.perf_counter()

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def row(self, iteration: int, lr: float, means: list[float | None]) -> None:
        """Report a log row (`means` as in MetricWindow: total loss, stage losses, routed fractions)."""
        if not self.enabled:
            return
        if self.bar is not None:
            if means[0] is not None:
                self.bar.set_postfix(loss=f"{means[0]:.4f}")
            return
        now = time.perf_counter()
        rate = (iteration - self.last_iteration) / max(now - self.last_time, 1e-9)
        self.last_iteration, self.last_time = iteration, now
        stages = " ".join(f"{v:.4f}" if v is not None else "-" for v in means[1:4])
        total = "-" if means[0] is None else f"{means[0]:.4f}"
        log.info("train %s: iteration %d/%d, loss %s (stages 1/2/3: %s), lr %.3g, %.2f it/s", self.name,
                 iteration, self.total, total, stages, lr, rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
