"""The rho sweep of Table 1 and Fig. 5(b)/7(a) (`lc sweep`): stage shares, mIoU and time per threshold.

The sweep evaluates (rho, checkpoint) pairs, one CSV row each, naming the checkpoint:
- one checkpoint re-thresholded at every rho of `evaluate.rho_sweep` (`evaluate.sweep_retrain:
  false`, the demo's reading);
- one checkpoint per rho (`evaluate.sweep_retrain: true`, the paper's): each evaluated at the rho
  given for it, or else at the rho it was trained with (its model_spec). A model that does not route
  at evaluation (DSN: LC trained at rho = 1) stands for rho = 1, so the rho = 1 row can be the DSN run
  and the rho = train.rho row the main LC run.
Pairs sharing a checkpoint are evaluated in one pass over the images (each rho still its own
forward; see `lc.evaluation.evaluate.evaluate_model`). The protocol is single scale, no CRF, as in
the paper's Table 1.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lc.data import build_dataset
from lc.data.io import write_csv
from lc.device import device_name, resolve_device
from lc.evaluation.evaluate import evaluate_model
from lc.evaluation.loading import load_for_evaluation, model_variant, routes_at_eval
from lc.training.checkpoint import load_checkpoint

__all__ = ["SWEEP_COLUMNS", "run_sweep", "sweep_plan"]

log = logging.getLogger(__name__)

SWEEP_COLUMNS = ["rho", "stage1_pct", "stage2_pct", "stage3_pct", "miou", "ms_per_image", "device", "preset",
                 "variant", "checkpoint"]


def _own_rho(path: Path) -> float:
    """The rho a checkpoint stands for: 1 for a model that does not route at evaluation (DSN, IRNet),
    else the rho it was trained with."""
    spec = load_checkpoint(path)["model_spec"]  # a clear error for a missing or corrupt file
    if not routes_at_eval(str(spec.get("variant"))):
        return 1.0
    return float(spec["rho"])


def sweep_plan(cfg: dict, checkpoints: Sequence[str | Path],
               rhos: Sequence[float] | None = None) -> list[tuple[float, Path]]:
    """The (rho, checkpoint) pairs to evaluate, in the order the CSV rows will have.

    One checkpoint: at `rhos`, or else at every rho of evaluate.rho_sweep. Several: one rho per
    checkpoint, from `rhos` (same length) or else each checkpoint's own (see `_own_rho`). A rho
    given twice is refused (two rows for one threshold would be ambiguous).
    """
    if not checkpoints:
        raise ValueError("lc sweep needs at least one --checkpoint")
    checkpoints = [Path(c) for c in checkpoints]
    if len(checkpoints) == 1:
        values = list(rhos) if rhos else [float(r) for r in cfg["evaluate"]["rho_sweep"]]
        pairs = [(float(r), checkpoints[0]) for r in values]
    elif rhos:
        if len(rhos) != len(checkpoints):
            raise ValueError(f"lc sweep got {len(checkpoints)} checkpoints but {len(rhos)} --rho values; "
                             "give one --rho per checkpoint, or none to read each checkpoint's own rho")
        pairs = [(float(r), path) for r, path in zip(rhos, checkpoints, strict=True)]
    else:
        pairs = [(_own_rho(path), path) for path in checkpoints]
    seen: dict[float, Path] = {}
    for rho, path in pairs:
        if rho in seen:
            raise ValueError(f"lc sweep: rho {rho:g} comes twice ({seen[rho]} and {path}); give each "
                             "threshold once (--rho per checkpoint)")
        seen[rho] = path
    return pairs


def run_sweep(cfg: dict, checkpoints: Sequence[str | Path], dataset: str = "voc", split: str = "val",
              out: str | Path | None = None, rhos: Sequence[float] | None = None,
              max_images: int | None = None, device: str | None = None) -> pd.DataFrame:
    """Evaluate every planned (rho, checkpoint); a row per pair (SWEEP_COLUMNS); the CSV is atomic."""
    device_t = resolve_device(device or cfg.get("device"))
    data = build_dataset(cfg, dataset, split)
    max_images = max_images if max_images is not None else cfg["evaluate"].get("max_images")
    rows = []
    for path, group in itertools.groupby(sweep_plan(cfg, checkpoints, rhos), key=lambda pair: pair[1]):
        values = [rho for rho, _ in group]
        model, _ = load_for_evaluation(cfg, path, dataset, device_t)
        variant = model_variant(model)
        if not routes_at_eval(variant) and values != [1.0]:
            log.warning("%s is a %s model, whose evaluation does not depend on rho (rows at rho %s)", path,
                        variant, ", ".join(f"{r:g}" for r in values))
        accumulators = evaluate_model(model, data, values, device=device_t, max_images=max_images,
                                      workers=int(cfg["train"].get("workers", 0)),
                                      desc=f"sweep {path.parent.name} ({len(values)} rho)",
                                      log_every=int(cfg["train"].get("log_every", 20)))
        for rho, acc in zip(values, accumulators, strict=True):
            share = acc.stage_share
            rows.append({"rho": rho, "stage1_pct": share[0] * 100, "stage2_pct": share[1] * 100,
                         "stage3_pct": share[2] * 100, "miou": acc.metrics()["miou"],
                         "ms_per_image": acc.ms_per_image, "device": device_name(device_t),
                         "preset": cfg["preset"], "variant": variant, "checkpoint": str(path)})
    table = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    if out is not None:
        write_csv(table, out)
    return table
