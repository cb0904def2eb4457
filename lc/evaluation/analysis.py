"""Analyses behind Figs. 1, 4 and 6: pixel difficulty of a trained baseline, stage-by-stage examples.

Pixel difficulty (the paper's Sec. 1, `lc analyze difficulty`), from the baseline's softmax upsampled
bilinearly to the label resolution (logit i at pixel 8i, as in training: `lc.evaluation.alignment`),
over labelled pixels (255 ignored), with c = `evaluate.difficulty.confidence`:
- easy: correctly classified with top probability > c;
- hard: misclassified with top probability > c;
- moderate: top probability <= c.
The boundary share is the fraction of hard pixels within `evaluate.difficulty.boundary_px` pixels
(Euclidean) of a label boundary: a pixel whose right or lower neighbour holds another label value.
The ignore value counts as a value, so the edges of VOC's 255 contour band are boundaries.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from lc.data import CLASS_NAMES, IGNORE_INDEX, build_dataset, denormalize
from lc.data.io import atomic_path, write_csv
from lc.device import device_name, resolve_device
from lc.evaluation.evaluate import write_json
from lc.evaluation.inference import predict
from lc.evaluation.loading import load_for_evaluation, model_variant
from lc.evaluation.progress import progress

__all__ = ["DIFFICULTY_COLUMNS", "DifficultyCounter", "boundary_band", "difficulty_masks", "run_difficulty",
           "run_stage_examples", "stage_examples"]

DIFFICULTY_COLUMNS = ["class", "easy_pct", "moderate_pct", "hard_pct", "pixels"]


def difficulty_masks(probs: torch.Tensor, label: torch.Tensor,
                     confidence: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(easy, moderate, hard) bool maps (H, W) for probabilities (K, H, W) and a label (H, W).

    Unlabelled pixels (255) are in none of the three sets.
    """
    if probs.ndim != 3 or tuple(probs.shape[1:]) != tuple(label.shape):
        raise ValueError(f"probabilities (K, H, W) must match the label (H, W); got {tuple(probs.shape)} "
                         f"and {tuple(label.shape)}")
    top, pred = probs.max(dim=0)
    labelled = label != IGNORE_INDEX
    confident = top > confidence
    correct = pred == label
    return labelled & confident & correct, labelled & ~confident, labelled & confident & ~correct


def boundary_band(label: np.ndarray, radius_px: float) -> np.ndarray:
    """(H, W) bool: pixels within `radius_px` (Euclidean) of a label boundary."""
    label = np.asarray(label)
    edge = np.zeros(label.shape, dtype=bool)
    horizontal = label[:, 1:] != label[:, :-1]
    vertical = label[1:, :] != label[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    if not edge.any():
        return edge
    return ndimage.distance_transform_edt(~edge) <= radius_px


class DifficultyCounter:
    """Per-class easy / moderate / hard counts and the hard pixels near boundaries, image by image."""

    def __init__(self, num_classes: int, confidence: float, boundary_px: float):
        self.num_classes, self.confidence, self.boundary_px = num_classes, float(confidence), boundary_px
        self.counts = np.zeros((num_classes, 3), dtype=np.int64)  # columns: easy, moderate, hard
        self.hard_near_boundary = 0
        self.band_pixels = 0  # labelled pixels within the band (what a uniform spread would give)
        self.num_images = 0

    def add(self, probs: torch.Tensor, label: torch.Tensor) -> None:
        """One image: probabilities (K, H, W) at label resolution and its label (H, W)."""
        label = label.to(probs.device)
        masks = difficulty_masks(probs, label, self.confidence)
        for column, mask in enumerate(masks):
            counts = torch.bincount(label[mask].long(), minlength=self.num_classes)
            self.counts[:, column] += counts.cpu().numpy()[: self.num_classes]
        band = torch.from_numpy(boundary_band(label.cpu().numpy(), self.boundary_px)).to(probs.device)
        self.hard_near_boundary += int((masks[2] & band).sum())
        self.band_pixels += int((band & (label != IGNORE_INDEX)).sum())
        self.num_images += 1

    def table(self, class_names: list[str]) -> pd.DataFrame:
        """DIFFICULTY_COLUMNS, one row per class; shares empty for a class without labelled pixels."""
        pixels = self.counts.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            pct = self.counts / pixels[:, None] * 100.0
        return pd.DataFrame({"class": class_names, "easy_pct": pct[:, 0], "moderate_pct": pct[:, 1],
                             "hard_pct": pct[:, 2], "pixels": pixels})[DIFFICULTY_COLUMNS]

    def summary(self) -> dict:
        totals = self.counts.sum(axis=0)
        labelled = int(totals.sum())
        hard = int(totals[2])
        overall = totals / labelled * 100.0 if labelled else np.full(3, np.nan)
        return {
            "hard_boundary_share": self.hard_near_boundary / hard if hard else float("nan"),
            "boundary_px": self.boundary_px, "confidence": self.confidence,
            "easy_pct": float(overall[0]), "moderate_pct": float(overall[1]), "hard_pct": float(overall[2]),
            "hard_pixels": hard, "labelled_pixels": labelled,
            "band_pixel_share": self.band_pixels / labelled if labelled else float("nan"),
            "num_images": self.num_images,
        }


def run_difficulty(cfg: dict, checkpoint: str | Path, dataset: str = "voc", split: str = "val",
                   out_csv: str | Path | None = None, out_json: str | Path | None = None,
                   max_images: int | None = None, device: str | None = None) -> tuple[pd.DataFrame, dict]:
    """`lc analyze difficulty`: per-class table and summary (hard_boundary_share, ...) of a baseline."""
    settings = cfg["evaluate"]["difficulty"]
    device_t = resolve_device(device or cfg.get("device"))
    model, model_info = load_for_evaluation(cfg, checkpoint, dataset, device_t)
    data = build_dataset(cfg, dataset, split)
    max_images = max_images if max_images is not None else cfg["evaluate"].get("max_images")
    count = len(data) if max_images is None else min(len(data), int(max_images))
    if count == 0 or not data.has_labels:
        raise ValueError(f"{data.list_file}: the difficulty analysis needs labelled images (a val split)")
    counter = DifficultyCounter(len(CLASS_NAMES[dataset]), settings["confidence"], settings["boundary_px"])
    for index in progress(range(count), count, f"difficulty {dataset} {split}",
                          int(cfg["train"].get("log_every", 20))):
        item = data[index]
        prediction = predict(model, item["image"][None].to(device_t))
        counter.add(prediction.probs[0], item["label"])
    table = counter.table(list(CLASS_NAMES[dataset]))
    summary = {"dataset": dataset, "split": split, "checkpoint": str(checkpoint),
               "variant": model_variant(model), "preset": cfg["preset"],
               "device": device_name(device_t), "model": model_info, **counter.summary()}
    if out_csv is not None:
        write_csv(table, out_csv)
        write_json(out_json if out_json is not None else Path(out_csv).with_suffix(".json"), summary)
    elif out_json is not None:
        write_json(out_json, summary)
    return table, summary


def _stack_padded(values: list[np.ndarray], fill) -> np.ndarray:
    """Stack arrays of different (H, W, ...) sizes, padded at the bottom/right with `fill`."""
    shape = tuple(max(v.shape[i] for v in values) for i in range(values[0].ndim))
    out = np.full((len(values), *shape), fill, dtype=values[0].dtype)
    for i, value in enumerate(values):
        out[(i, *(slice(0, n) for n in value.shape))] = value
    return out


# what a padded pixel holds in each array of the npz (image_sizes says where each image ends)
_PAD = {"images": 0, "labels": IGNORE_INDEX, "stage_masks": False, "stage_predictions": IGNORE_INDEX,
        "decided_at_stage": 0, "final": IGNORE_INDEX}


@torch.inference_mode()
def stage_examples(model: torch.nn.Module, data: Dataset, num_images: int, rho: float | None = None,
                   device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """The arrays of `analysis/stage_examples_<dataset>.npz` (README contract) for the first images.

    Images of different sizes are padded at the bottom/right to the largest (labels and predictions
    with 255, masks with False); `image_sizes` holds each image's own (height, width).
    """
    device = torch.device(device)
    indices = list(range(min(num_images, len(data))))
    if not indices:
        raise ValueError(f"{getattr(data, 'list_file', 'the data set')} has no images for stage examples")
    rows: dict[str, list] = {key: [] for key in ("images", "labels", "stage_masks", "stage_predictions",
                                                 "decided_at_stage", "final", "names")}
    for index in indices:
        item = data[index]
        if "label" not in item:
            raise ValueError(f"{data.list_file} has no labels; stage examples need a labelled split (val)")
        output = model(item["image"][None].to(device), rho=rho)
        blank = torch.full(output.decided_at_stage.shape[1:], IGNORE_INDEX, dtype=torch.uint8)
        predictions = [blank if lg is None else lg[0].argmax(dim=0).to(torch.uint8).cpu()
                       for lg in output.stage_logits]
        rows["images"].append(denormalize(item["image"]))
        rows["labels"].append(item["label"].numpy().astype(np.uint8))
        rows["stage_masks"].append(torch.stack([m[0] for m in output.stage_masks]).cpu().numpy())
        rows["stage_predictions"].append(torch.stack(predictions).numpy())
        rows["decided_at_stage"].append(output.decided_at_stage[0].cpu().numpy().astype(np.uint8))
        rows["final"].append(output.probs[0].argmax(dim=0).to(torch.uint8).cpu().numpy())
        rows["names"].append(item["name"])
    arrays = {key: _stack_padded(values, _PAD[key]) for key, values in rows.items() if key != "names"}
    # images of different sizes are padded to the largest: (height, width) of each, for the figures
    arrays["image_sizes"] = np.array([image.shape[:2] for image in rows["images"]], dtype=np.int64)
    arrays["names"] = np.array(rows["names"], dtype=str)
    arrays["rho"] = np.float64(model.rho if rho is None else rho)
    return arrays


def run_stage_examples(cfg: dict, checkpoint: str | Path, dataset: str, out: str | Path, split: str = "val",
                       num_images: int = 4, rho: float | None = None, device: str | None = None) -> Path:
    """`lc analyze stages`: write the stage examples of `checkpoint` to `out` (.npz, atomic)."""
    device_t = resolve_device(device or cfg.get("device"))
    model, _ = load_for_evaluation(cfg, checkpoint, dataset, device_t)
    arrays = stage_examples(model, build_dataset(cfg, dataset, split), num_images, rho, device_t)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(out)
