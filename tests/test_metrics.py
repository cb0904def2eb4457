"""Confusion matrix and IoU: hand-computed cases, an independent numpy count, and cityscapesscripts."""

import importlib
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lc.evaluation.metrics import (
    ConfusionMeter,
    confusion_matrix,
    iou_from_confusion,
    mean_iou,
    pixel_accuracy,
)


def test_hand_computed_three_classes():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 1, 2]])
    cm = confusion_matrix(pred, target, num_classes=3)
    # rows = ground truth, cols = prediction; the pixel with target 255 is not counted
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    assert cm.dtype == np.int64
    # class 0: tp 1, fn 1, fp 0 -> 1/2; class 1: tp 2, fp 2 -> 2/4; class 2: tp 0, fn 1 -> 0
    np.testing.assert_allclose(iou_from_confusion(cm), [0.5, 0.5, 0.0])
    assert mean_iou(cm) == pytest.approx(1.0 / 3.0)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)


def test_class_absent_from_both_is_nan_and_left_out_of_the_mean():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    cm = confusion_matrix(pred, target, num_classes=4)
    iou = iou_from_confusion(cm)
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    np.testing.assert_allclose(iou[:2], [1 / 2, 2 / 3])
    assert mean_iou(cm) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_torch_and_numpy_inputs_agree():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 7, 9), generator=gen, dtype=torch.uint8)
    target[0, :2] = 255
    pred = torch.randint(0, 5, (2, 7, 9), generator=gen)
    expected = confusion_matrix(pred.numpy(), target.numpy(), 5)
    np.testing.assert_array_equal(confusion_matrix(pred, target, 5), expected)
    np.testing.assert_array_equal(confusion_matrix(pred.numpy(), target, 5), expected)  # mixed
    with pytest.raises(ValueError, match="target holds label 9"):
        confusion_matrix(pred, torch.full_like(target, 9), 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_against_an_independent_count(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 25))
    target = rng.integers(0, num_classes, size=(3, 31, 17))
    target[rng.random(target.shape) < 0.2] = 255
    pred = rng.integers(0, num_classes, size=target.shape)
    cm = confusion_matrix(pred, target, num_classes)

    expected_cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    expected_iou = np.full(num_classes, np.nan)
    valid = target != 255
    for k in range(num_classes):
        for j in range(num_classes):
            expected_cm[k, j] = np.sum(valid & (target == k) & (pred == j))
        tp = np.sum(valid & (target == k) & (pred == k))
        union = np.sum(valid & ((target == k) | (pred == k)))
        if union:
            expected_iou[k] = tp / union
    np.testing.assert_array_equal(cm, expected_cm)
    np.testing.assert_allclose(iou_from_confusion(cm), expected_iou, equal_nan=True)
    assert pixel_accuracy(cm) == pytest.approx(np.mean(pred[valid] == target[valid]))


def test_meter_streams_batches_and_resets():
    rng = np.random.default_rng(3)
    meter = ConfusionMeter(num_classes=4)
    preds = [rng.integers(0, 4, (5, 6)) for _ in range(3)]
    targets = [rng.integers(0, 4, (5, 6)) for _ in range(3)]
    for p, t in zip(preds, targets, strict=True):
        meter.add(torch.from_numpy(p), torch.from_numpy(t))
    whole = confusion_matrix(np.stack(preds), np.stack(targets), 4)
    np.testing.assert_array_equal(meter.value, whole)
    assert meter.mean_iou() == pytest.approx(mean_iou(whole))
    meter.value[0, 0] = 10**6  # value is a copy
    np.testing.assert_array_equal(meter.value, whole)
    meter.add_confusion(whole)
    np.testing.assert_array_equal(meter.value, 2 * whole)
    meter.reset()
    assert meter.value.sum() == 0


def test_out_of_range_labels_raise_naming_the_value():
    with pytest.raises(ValueError, match="target holds label 7"):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]), num_classes=3)
    with pytest.raises(ValueError, match="prediction holds label -1"):
        confusion_matrix(np.array([0, -1]), np.array([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match="prediction holds label 255"):
        confusion_matrix(np.array([255, 1]), np.array([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), num_classes=3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(torch.zeros(4), torch.zeros(4, dtype=torch.long), num_classes=3)
    # a prediction on an ignored pixel is never checked or counted
    cm = confusion_matrix(np.array([255, 1]), np.array([255, 1]), num_classes=3)
    assert cm.sum() == 1


def _cityscapes_evaluation(monkeypatch, root):
    """Import cityscapesscripts' pixel-level evaluation with its paths pointed at `root`."""
    monkeypatch.setenv("CITYSCAPES_DATASET", str(root))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(root / "results"))
    (root / "export").mkdir(exist_ok=True)
    monkeypatch.setenv("CITYSCAPES_EXPORT_DIR", str(root / "export"))
    name = "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling"
    module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    module.args.quiet = True
    # instance-level scores need instanceIds files and call np.in1d, which numpy 2.4 removed
    module.args.evalInstLevelScore = False
    return module


def test_per_class_iou_equals_cityscapesscripts(tmp_path, monkeypatch):
    from cityscapesscripts.helpers.labels import labels

    label_ids = np.array([lab.id for lab in labels if lab.id >= 0])
    eval_ids = np.array([lab.id for lab in labels if 0 <= lab.trainId < 19])
    label_to_train = np.full(256, 255, dtype=np.int64)
    for lab in labels:
        if lab.id >= 0 and 0 <= lab.trainId < 19:
            label_to_train[lab.id] = lab.trainId
    train_names = {lab.trainId: lab.name for lab in labels if 0 <= lab.trainId < 19}
    assert len(eval_ids) == 19

    rng = np.random.default_rng(0)
    gt_dir = tmp_path / "gtFine" / "val" / "aachen"
    pred_dir = tmp_path / "results"
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir()
    meter = ConfusionMeter(num_classes=19)
    for frame in range(3):
        # ground truth over every labelId (ignored ones included); predictions of evaluated
        # classes, biased towards the truth so that IoUs spread over (0, 1)
        gt = rng.choice(label_ids, size=(24, 40)).astype(np.uint8)
        pred = rng.choice(eval_ids, size=gt.shape).astype(np.uint8)
        agree = (rng.random(gt.shape) < 0.5) & (label_to_train[gt] != 255)
        pred[agree] = gt[agree]
        stem = f"aachen_{frame:06d}_000019"
        Image.fromarray(gt).save(gt_dir / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(pred).save(pred_dir / f"{stem}_leftImg8bit.png")
        meter.add(label_to_train[pred], label_to_train[gt])

    evaluation = _cityscapes_evaluation(monkeypatch, tmp_path)
    monkeypatch.setattr(sys, "argv", ["evalPixelLevelSemanticLabeling"])
    evaluation.main()
    result = json.loads((tmp_path / "export" / "resultPixelLevelSemanticLabeling.json").read_text())

    ours = meter.iou()
    theirs = np.array([result["classScores"][train_names[k]] for k in range(19)])
    assert np.isfinite(theirs).all() and 0.05 < theirs.min() and theirs.max() < 0.95
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert meter.mean_iou() == pytest.approx(result["averageScoreClasses"], abs=1e-6)
