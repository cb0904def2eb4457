"""Segmentation metrics: confusion matrix, per-class IoU, mean IoU, pixel accuracy.

Conventions (every public function here):
- a confusion matrix `cm` is (K, K) int64 with rows = ground truth, columns = prediction;
- metrics are *fractions* in [0, 1]; callers that report percent multiply by 100;
- pixels whose ground truth is `ignore_index` (255) are not counted, whatever their prediction;
  everywhere else the prediction must be a class in [0, K). This is the VOC / Cityscapes protocol:
  a prediction on an ignored pixel is neither a true nor a false positive.
"""

from __future__ import annotations

import numpy as np
import torch

from lc.data.labels import IGNORE_INDEX

ArrayLike = np.ndarray | torch.Tensor


def _as_int64_numpy(values: ArrayLike, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        if values.is_floating_point() or values.is_complex():
            raise ValueError(f"{what} must hold integer class indices, got a {values.dtype} tensor")
        return values.detach().to("cpu", torch.int64).numpy().ravel()
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"{what} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False).ravel()


def confusion_matrix(
    pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """(K, K) int64 counts, rows = ground truth, cols = prediction; ignored targets are skipped.

    `pred` and `target` are label maps of equal shape (torch or numpy, any integer dtype).
    A value outside [0, K) that is not `ignore_index` raises ValueError naming it; so does a
    prediction equal to `ignore_index` on a pixel whose target is a class (it would be uncounted).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred_shape = tuple(pred.shape)
    target_shape = tuple(target.shape)
    if pred_shape != target_shape:
        raise ValueError(f"prediction shape {pred_shape} differs from target shape {target_shape}")
    if isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor):
        # count where the tensors live (e.g. on the GPU): only K*K numbers cross to the host
        for what, t in (("prediction", pred), ("target", target)):
            if t.is_floating_point() or t.is_complex():
                raise ValueError(f"{what} must hold integer class indices, got a {t.dtype} tensor")
        pred_flat = pred.detach().reshape(-1).to(torch.int64)
        target_flat = target.detach().reshape(-1).to(device=pred_flat.device, dtype=torch.int64)
        bincount = torch.bincount
    else:
        pred_flat = _as_int64_numpy(pred, "prediction")
        target_flat = _as_int64_numpy(target, "target")
        bincount = np.bincount

    counted = target_flat != ignore_index
    target_flat = target_flat[counted]
    pred_flat = pred_flat[counted]
    bad_target = (target_flat < 0) | (target_flat >= num_classes)
    if bad_target.any():
        raise ValueError(
            f"target holds label {int(target_flat[bad_target][0])}, outside [0, {num_classes}) and not "
            f"the ignore index {ignore_index}; map the labels to train ids first"
        )
    bad_pred = (pred_flat < 0) | (pred_flat >= num_classes)
    if bad_pred.any():
        raise ValueError(
            f"prediction holds label {int(pred_flat[bad_pred][0])} on a labelled pixel, outside "
            f"[0, {num_classes}); predictions must be class indices (train ids)"
        )
    counts = bincount(target_flat * num_classes + pred_flat, minlength=num_classes * num_classes)
    if isinstance(counts, torch.Tensor):
        counts = counts.cpu().numpy()
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def _check_cm(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square (K, K), got shape {cm.shape}")
    return cm.astype(np.float64)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN), a fraction; NaN for a class absent from both maps."""
    cm = _check_cm(cm)
    true_positive = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean of the per-class IoU over the classes present in prediction or ground truth (fraction)."""
    iou = iou_from_confusion(cm)
    if np.isnan(iou).all():
        return float("nan")
    return float(np.nanmean(iou))


def pixel_accuracy(cm: np.ndarray) -> float:
    """Correctly labelled pixels / labelled pixels (fraction; NaN when nothing was counted)."""
    cm = _check_cm(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


class ConfusionMeter:
    """Streaming confusion matrix: `add` batches, read `value` (a copy) or the derived metrics."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._cm = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, pred: ArrayLike, target: ArrayLike) -> None:
        self._cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def add_confusion(self, cm: np.ndarray) -> None:
        """Merge a confusion matrix computed elsewhere (e.g. another worker's)."""
        cm = np.asarray(cm)
        if cm.shape != self._cm.shape:
            raise ValueError(f"confusion matrix shape {cm.shape} does not match {self._cm.shape}")
        self._cm += cm.astype(np.int64)

    @property
    def value(self) -> np.ndarray:
        return self._cm.copy()

    def reset(self) -> None:
        self._cm[:] = 0

    def iou(self) -> np.ndarray:
        return iou_from_confusion(self._cm)

    def mean_iou(self) -> float:
        return mean_iou(self._cm)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self._cm)


__all__ = [
    "ConfusionMeter",
    "confusion_matrix",
    "iou_from_confusion",
    "mean_iou",
    "pixel_accuracy",
]
