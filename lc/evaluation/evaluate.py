"""Evaluation on a labelled split: confusion matrix, IoU, stage statistics and timing (`lc evaluate`).

Protocol (`lc.evaluation.inference`): the cascade's stride-8 class probabilities are upsampled to
the image size with logit i at pixel 8i (as in training; `lc.evaluation.alignment`), fused over
the views under multi-scale testing, optionally refined by the dense CRF of `lc.evaluation.crf`,
and the argmax is compared with the full-resolution label; label 255 is ignored. Stage statistics
(pixels decided at each stage, label histogram of the pixels passed on) are counted at stride 8 on
the reference view, against the label at pixel (8i, 8j).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from lc.data import CLASS_NAMES, IGNORE_INDEX, build_dataset
from lc.data.io import write_text_atomic
from lc.device import device_name, resolve_device
from lc.evaluation.alignment import output_stride, subsample_labels
from lc.evaluation.inference import Protocol, StageTimer, predict, protocol_from_config, run_protocol
from lc.evaluation.loading import load_evaluation_model, load_for_evaluation, model_variant, routes_at_eval
from lc.evaluation.metrics import ConfusionMeter
from lc.evaluation.progress import progress
from lc.models.cascade import CascadeOutput

__all__ = ["EvalAccumulator", "evaluate_model", "load_evaluation_model", "model_variant", "run_evaluation",
           "write_json"]

log = logging.getLogger(__name__)
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

    def __init__(self, num_classes: int, stride: int = 8):
        self.num_classes, self.stride = num_classes, stride
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
        small = subsample_labels(label.to(decided.device), tuple(decided.shape), self.stride)
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_model(model: nn.Module, data: Dataset, rhos: Sequence[float | None] = (None,),
                   protocol: Protocol | None = None, device: torch.device | str = "cpu",
                   max_images: int | None = None, workers: int = 0, desc: str = "evaluate",
                   log_every: int = 20) -> list[EvalAccumulator]:
    """Evaluate `model` on the labelled `data` once per rho (None: the model's own); one accumulator each.

    protocol: views, fusion and CRF (default: single scale, no CRF). A routed cascade's stage-2/3
    features depend on which neighbours are routed with a pixel, so each rho is a forward of its
    own (no pass is shared between thresholds). Time per image covers the forward passes of every
    view, upsampling, fusion and the CRF, not data loading.
    """
    protocol = protocol or Protocol()
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
    accumulators = [EvalAccumulator(model.num_classes, output_stride(model)) for _ in rhos]
    timer = StageTimer(model, device)
    with torch.inference_mode():  # warm-up (kernel selection, allocator): the first image, untimed
        predict(model, first["image"][None].to(device), rho=rhos[0], views=protocol.views,
                fusion=protocol.fusion)
    with timer, torch.inference_mode():
        for item in progress(loader, count, desc, log_every):
            images, label = item["image"].to(device), item["label"][0].to(device)
            for rho, acc in zip(rhos, accumulators, strict=True):
                timer.seconds[:] = 0.0
                _sync(device)
                start = time.perf_counter()
                labels, prediction = run_protocol(model, images, protocol, rho=rho, timer=timer)
                _sync(device)
                acc.seconds += time.perf_counter() - start
                acc.stage_seconds += timer.seconds
                acc.add(labels[0], label, prediction.output)
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
    model, model_info = load_for_evaluation(cfg, checkpoint, dataset, device_t)
    data = build_dataset(cfg, dataset, split)
    protocol = protocol_from_config(ev, multi_scale, crf)
    max_images = max_images if max_images is not None else ev.get("max_images")
    (acc,) = evaluate_model(model, data, [rho], protocol, device_t, max_images,
                            workers=int(cfg["train"].get("workers", 0)), desc=f"evaluate {dataset} {split}",
                            log_every=int(cfg["train"].get("log_every", 20)))
    stage_time, notes = _stage_time(acc, f"not measurable for a {type(model).__name__}")
    effective_rho = float(model.rho if rho is None else rho)
    variant = model_variant(model)
    if not routes_at_eval(variant):
        notes.append(f"rho: a {variant} model does not route at evaluation; every pixel goes through every "
                     "stage it has")
    if not model_info["matches_config"]:
        notes.append("model: the checkpoint's architecture differs from the config's model section "
                     f"({', '.join(model_info['differences_from_config'])}); the checkpoint's was evaluated")
    report = {
        "dataset": dataset, "split": split, "variant": variant, "preset": cfg["preset"],
        "device": device_name(device_t), "checkpoint": str(checkpoint), "num_images": acc.num_images,
        "rho": effective_rho,
        "protocol": {**protocol.describe(), "ignore_index": IGNORE_INDEX},
        "model": model_info,
        "class_names": list(CLASS_NAMES[dataset]),
        **acc.metrics(),
        "stage_share": acc.stage_share,
        "routed_label_hist": {key: hist.tolist() for key, hist in acc.routed_label_hist.items()},
        "ms_per_image": acc.ms_per_image,
        "stage_time_ms": stage_time,
        "notes": notes,
    }
    log.info("%s %s %s: mIoU %s on %d images (protocol: scales %s, flip %s, fusion %s, crf %s)", dataset,
             split, variant, report["miou"], acc.num_images, protocol.scales, protocol.flip, protocol.fusion,
             protocol.crf is not None)
    if out is not None:
        write_json(out, report)
    return report
