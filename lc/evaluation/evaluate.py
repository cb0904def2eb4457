"""Evaluation on a labelled split: confusion matrix, IoU, stage statistics and timing (`lc evaluate`).

Protocol: the cascade's stride-8 class probabilities are upsampled bilinearly to the image size
(averaged over the views of `lc.evaluation.inference` under multi-scale testing), optionally refined by the
dense CRF of `lc.evaluation.crf`, and the argmax is compared with the full-resolution label; label 255 is
ignored. Stage statistics (pixels decided at each stage, label histogram of the pixels passed on)
are counted at stride 8 on the reference view.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from lc.data import CLASS_NAMES, NUM_CLASSES, build_dataset, denormalize
from lc.data.io import write_text_atomic
from lc.device import device_name, resolve_device
from lc.evaluation.crf import dense_crf
from lc.evaluation.inference import SINGLE_VIEW, StageTimer, View, predict, protocol_views
from lc.evaluation.metrics import ConfusionMeter
from lc.models.cascade import CascadeOutput
from lc.models.mc import ModelCascade
from lc.training.checkpoint import load_model
from lc.training.losses import downsample_labels

__all__ = ["EvalAccumulator", "evaluate_model", "load_evaluation_model", "model_variant", "run_evaluation",
           "write_json"]

IGNORE_INDEX = 255
HIST_KEYS = ("all", "stage2", "stage3")


# a list of numbers (and nulls) that json.dumps(indent=...) spread over one line per element
_NUMBER_LIST = re.compile(r"\[\s*((?:-?[0-9.eE+-]+|null)(?:,\s*(?:-?[0-9.eE+-]+|null))*)\s*\]")


def write_json(path: str | Path, payload: Mapping) -> Path:
    """Indented JSON, lists of numbers on one line, NaN as null; written to a temp file, then renamed."""
    text = json.dumps(_json_safe(payload), indent=1)
    text = _NUMBER_LIST.sub(lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text) + "\n"
    write_text_atomic(path, text)
    return Path(path)


def _json_safe(value):
    if isinstance(value, float):
        return None if not np.isfinite(value) else value
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


def _percent(fraction: float) -> float | None:
    return None if not np.isfinite(fraction) else float(fraction) * 100.0


class EvalAccumulator:
    """Everything `lc evaluate` reports, accumulated image by image."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.meter = ConfusionMeter(num_classes, IGNORE_INDEX)
        self.decided_counts = np.zeros(3, dtype=np.int64)  # stride-8 pixels decided at stages 1..3
        self.routed_label_hist = {key: np.zeros(num_classes, dtype=np.int64) for key in HIST_KEYS}
        self.num_images = 0
        self.seconds = 0.0
        self.stage_seconds = np.zeros(3)

    def add(self, pred: torch.Tensor, label: torch.Tensor, output: CascadeOutput, index: int = 0) -> None:
        """One image: full-size prediction and label (H, W), and its reference view's cascade output."""
        self.meter.add(pred, label.to(pred.device))
        decided = output.decided_at_stage[index]
        self.decided_counts += torch.bincount(decided.flatten().long(), minlength=4)[1:4].cpu().numpy()
        small = downsample_labels(label[None].to(decided.device), tuple(decided.shape))[0]
        labelled = small != IGNORE_INDEX
        routed = {"all": labelled, "stage2": labelled & output.stage_masks[1][index],
                  "stage3": labelled & output.stage_masks[2][index]}
        for key, where in routed.items():
            counts = torch.bincount(small[where].long(), minlength=self.num_classes)
            self.routed_label_hist[key] += counts.cpu().numpy()[: self.num_classes]
        self.num_images += 1

    @property
    def stage_share(self) -> list[float]:
        total = self.decided_counts.sum()
        return (self.decided_counts / total).tolist() if total else [float("nan")] * 3

    @property
    def ms_per_image(self) -> float:
        return self.seconds / self.num_images * 1000.0 if self.num_images else float("nan")

    def metrics(self) -> dict:
        """miou, pixel_accuracy, per_class_iou (percent; None for a class absent from both), confusion."""
        iou = self.meter.iou()
        return {"miou": _percent(self.meter.mean_iou()),
                "pixel_accuracy": _percent(self.meter.pixel_accuracy()),
                "per_class_iou": [_percent(v) for v in iou], "confusion": self.meter.value.tolist()}


def model_variant(model: nn.Module) -> str:
    return "mc" if isinstance(model, ModelCascade) else str(getattr(model, "variant", type(model).__name__))


def load_evaluation_model(checkpoint: str | Path, dataset: str, device: torch.device) -> nn.Module:
    """The trained model of `checkpoint` in eval mode on `device`; refuses one trained for other classes."""
    model = load_model(checkpoint, map_location=device)
    expected = NUM_CLASSES[dataset]
    if getattr(model, "num_classes", expected) != expected:
        raise ValueError(f"checkpoint {checkpoint} predicts {model.num_classes} classes but {dataset} has "
                         f"{expected}; pass the checkpoint trained on {dataset} (runs/{dataset}/<variant>/)")
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_model(model: nn.Module, data: Dataset, rhos: Sequence[float | None] = (None,),
                   views: Sequence[View] = SINGLE_VIEW, crf_cfg: Mapping | None = None,
                   device: torch.device | str = "cpu", max_images: int | None = None, workers: int = 0,
                   desc: str = "evaluate") -> list[EvalAccumulator]:
    """Evaluate `model` on the labelled `data` once per rho (None: the model's own); one accumulator each.

    A routed cascade's stage-2/3 features depend on which neighbours are routed with a pixel, so
    each rho is a forward of its own (no pass is shared between thresholds). Time per image covers
    the forward passes of every view, upsampling, averaging and the CRF, not data loading.
    """
    device = torch.device(device)
    count = len(data) if max_images is None else min(len(data), int(max_images))
    if count == 0:
        raise ValueError(f"no images to evaluate in {getattr(data, 'list_file', 'the data set')}; "
                         "prepare the data set (`lc prepare`) or check evaluate.max_images")
    first = data[0]
    if "label" not in first:
        raise ValueError(f"{getattr(data, 'list_file', 'the split')} has no labels; evaluation needs a "
                         "labelled split (val), test predictions go through `lc export`")
    loader = DataLoader(Subset(data, range(count)), batch_size=1, num_workers=workers)
    accumulators = [EvalAccumulator(model.num_classes) for _ in rhos]
    timer = StageTimer(model, device)
    with torch.inference_mode():  # warm-up (kernel selection, allocator): the first image, untimed
        predict(model, first["image"][None].to(device), rho=rhos[0], views=views)
    with timer, torch.inference_mode():
        for item in tqdm(loader, total=count, desc=desc, unit="img", leave=False):
            images, label = item["image"].to(device), item["label"][0].to(device)
            for rho, acc in zip(rhos, accumulators, strict=True):
                timer.seconds[:] = 0.0
                _sync(device)
                start = time.perf_counter()
                prediction = predict(model, images, rho=rho, views=views, timer=timer)
                if crf_cfg is None:
                    pred = prediction.labels[0]
                else:
                    rgb = denormalize(item["image"][0])
                    probs = prediction.probs[0].cpu().numpy()
                    pred = torch.from_numpy(dense_crf(rgb, probs, crf_cfg)).to(device)
                _sync(device)
                acc.seconds += time.perf_counter() - start
                acc.stage_seconds += timer.seconds
                acc.add(pred, label, prediction.output)
    if not timer.available:
        for acc in accumulators:
            acc.stage_seconds[:] = np.nan
    return accumulators


def _stage_time(acc: EvalAccumulator, timer_note: str) -> tuple[list[float] | None, list[str]]:
    if not np.isfinite(acc.stage_seconds).all() or not acc.num_images:
        return None, [f"stage_time_ms: {timer_note}"]
    return (acc.stage_seconds / acc.num_images * 1000.0).tolist(), [
        "stage_time_ms: mean wall time per image of each stage's part of the forward passes (summed over "
        "the protocol's views), stage k = backbone stage k and its head plus the routing before it; "
        "measured inside the evaluation loop after one warm-up image (bench/stage_time.csv has the "
        "benchmark)"]


def run_evaluation(cfg: dict, checkpoint: str | Path, dataset: str, split: str = "val",
                   out: str | Path | None = None, rho: float | None = None, multi_scale: bool = False,
                   crf: bool = False, max_images: int | None = None, device: str | None = None) -> dict:
    """`lc evaluate`: evaluate one checkpoint, return the report dict and write it to `out` (JSON)."""
    ev = cfg["evaluate"]
    device_t = resolve_device(device or cfg.get("device"))
    model = load_evaluation_model(checkpoint, dataset, device_t)
    data = build_dataset(cfg, dataset, split)
    views = protocol_views(ev["scales"], bool(ev["flip"])) if multi_scale else list(SINGLE_VIEW)
    crf_cfg = dict(ev["crf"]) if crf else None
    max_images = max_images if max_images is not None else ev.get("max_images")
    (acc,) = evaluate_model(model, data, [rho], views, crf_cfg, device_t, max_images,
                            workers=int(cfg["train"].get("workers", 0)), desc=f"evaluate {dataset} {split}")
    stage_time, notes = _stage_time(acc, f"not measurable for a {type(model).__name__}")
    effective_rho = float(model.rho if rho is None else rho)
    variant = model_variant(model)
    if variant in ("irnet", "dsn", "dsn_dropout"):
        notes.append(f"rho: a {variant} model does not route at evaluation; every pixel goes through every "
                     "stage it has")
    report = {
        "dataset": dataset, "split": split, "variant": variant, "preset": cfg["preset"],
        "device": device_name(device_t), "checkpoint": str(checkpoint), "num_images": acc.num_images,
        "rho": effective_rho,
        "protocol": {"scales": [v.scale for v in views if not v.flip], "flip": any(v.flip for v in views),
                     "crf": crf, "crf_params": crf_cfg, "upsampling": "bilinear",
                     "ignore_index": IGNORE_INDEX},
        "class_names": list(CLASS_NAMES[dataset]),
        **acc.metrics(),
        "stage_share": acc.stage_share,
        "routed_label_hist": {key: hist.tolist() for key, hist in acc.routed_label_hist.items()},
        "ms_per_image": acc.ms_per_image,
        "stage_time_ms": stage_time,
        "notes": notes,
    }
    if out is not None:
        write_json(out, report)
    return report
