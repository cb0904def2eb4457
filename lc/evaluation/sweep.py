"""The rho sweep of Table 1 and Fig. 5(b)/7(a) (`lc sweep`): stage shares, mIoU and time per threshold.

Two designs, chosen by `evaluate.sweep_retrain`:
- one LC checkpoint re-thresholded at every rho of `evaluate.rho_sweep` (default);
- one checkpoint per rho (each trained with `lc train --rho`), each evaluated at its own rho,
  given by `rhos` or read from each checkpoint's model_spec.
Each rho is its own forward pass per image (see `lc.evaluation.evaluate.evaluate_model`); the protocol is
single scale, no CRF, as in the paper's Table 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lc.data import build_dataset
from lc.data.io import atomic_path
from lc.device import device_name, resolve_device
from lc.evaluation.evaluate import evaluate_model, load_evaluation_model, model_variant
from lc.training.checkpoint import load_checkpoint

__all__ = ["SWEEP_COLUMNS", "run_sweep", "sweep_plan"]

SWEEP_COLUMNS = ["rho", "stage1_pct", "stage2_pct", "stage3_pct", "miou", "ms_per_image", "device", "preset"]


def sweep_plan(cfg: dict, checkpoints: Sequence[str | Path],
               rhos: Sequence[float] | None = None) -> list[tuple[Path, list[float]]]:
    """(checkpoint, thresholds to evaluate it at) pairs, in the order the CSV rows will have.

    One checkpoint: `rhos` or else evaluate.rho_sweep. Several: one rho per checkpoint, from
    `rhos` (same length) or else each checkpoint's model_spec["rho"] (the rho it was trained with).
    """
    if not checkpoints:
        raise ValueError("lc sweep needs at least one --checkpoint")
    checkpoints = [Path(c) for c in checkpoints]
    if len(checkpoints) == 1:
        values = list(rhos) if rhos else [float(r) for r in cfg["evaluate"]["rho_sweep"]]
        return [(checkpoints[0], values)]
    if rhos:
        if len(rhos) != len(checkpoints):
            raise ValueError(f"lc sweep got {len(checkpoints)} checkpoints but {len(rhos)} --rho values; "
                             "give one --rho per checkpoint, or none to read each checkpoint's own rho")
        return [(path, [float(r)]) for path, r in zip(checkpoints, rhos, strict=True)]
    return [(path, [float(load_checkpoint(path)["model_spec"]["rho"])]) for path in checkpoints]


def run_sweep(cfg: dict, checkpoints: Sequence[str | Path], dataset: str = "voc", split: str = "val",
              out: str | Path | None = None, rhos: Sequence[float] | None = None,
              max_images: int | None = None, device: str | None = None) -> pd.DataFrame:
    """Evaluate at every planned (checkpoint, rho); a row per rho (SWEEP_COLUMNS); the CSV is atomic."""
    device_t = resolve_device(device or cfg.get("device"))
    data = build_dataset(cfg, dataset, split)
    max_images = max_images if max_images is not None else cfg["evaluate"].get("max_images")
    rows = []
    for path, values in sweep_plan(cfg, checkpoints, rhos):
        model = load_evaluation_model(path, dataset, device_t)
        if model_variant(model) != "lc":
            print(f"lc sweep: warning: {path} is a {model_variant(model)} model, whose evaluation does not "
                  "depend on rho", file=sys.stderr)
        accumulators = evaluate_model(model, data, values, device=device_t, max_images=max_images,
                                      workers=int(cfg["train"].get("workers", 0)),
                                      desc=f"sweep {path.parent.name} ({len(values)} rho)")
        for rho, acc in zip(values, accumulators, strict=True):
            share = acc.stage_share
            rows.append({"rho": rho, "stage1_pct": share[0] * 100, "stage2_pct": share[1] * 100,
                         "stage3_pct": share[2] * 100, "miou": acc.metrics()["miou"],
                         "ms_per_image": acc.ms_per_image, "device": device_name(device_t),
                         "preset": cfg["preset"]})
    table = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    if out is not None:
        with atomic_path(out) as tmp:
            table.to_csv(tmp, index=False)
    return table
