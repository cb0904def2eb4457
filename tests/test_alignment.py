"""Training and evaluation agree on where a stride-8 logit sits: logit i <-> pixel 8i.

Training pairs logit i with label pixel 8i (`lc.training.losses.downsample_labels`). A "model" whose
logits are the label map subsampled that very way must score 100% IoU after evaluation's upsampling
(`lc.evaluation`), and a model shifted by half a stride must not. Tolerance at the borders: a pixel
exactly half way between two logits (y = 8i + 4) is a tie between them, so the label maps below
mark those rows and columns 255 (ignored); pixels past the last logit take the last logit's value
(clamped), which the label maps reproduce. Nothing else is excused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lc.evaluation.alignment import logit_coordinates, subsample_labels, upsample_probs
from lc.evaluation.evaluate import evaluate_model
from lc.evaluation.inference import Protocol, View, predict
from lc.models.cascade import CascadeOutput
from lc.training.losses import downsample_labels

NUM_CLASSES = 9
STRIDE = 8


def _output(probs: torch.Tensor) -> CascadeOutput:
    batch, _, h, w = probs.shape
    full = torch.ones(batch, h, w, dtype=torch.bool)
    return CascadeOutput(stage_logits=[None, None, probs.log()], stage_masks=[full, full, full],
                         decided_at_stage=torch.full((batch, h, w), 3, dtype=torch.uint8), probs=probs)


class LabelEcho(nn.Module):
    """A "model" whose logits are the label map (carried in the image's first channel) subsampled the
    training way, optionally shifted by `shift` pixels down and right first."""

    def __init__(self, shift: int = 0):
        super().__init__()
        self.num_classes, self.rho, self.shift = NUM_CLASSES, 1.0, shift

    def forward(self, images: torch.Tensor, rho: float | None = None) -> CascadeOutput:
        labels = images[:, 0].round().long()
        if self.shift:
            labels = labels.roll(shifts=(-self.shift, -self.shift), dims=(-2, -1))
        grid = (-(-labels.shape[-2] // STRIDE), -(-labels.shape[-1] // STRIDE))
        small = downsample_labels(labels, grid).clamp(max=NUM_CLASSES - 1)
        logits = F.one_hot(small, NUM_CLASSES).permute(0, 3, 1, 2).float() * 10.0
        return _output(logits.softmax(dim=1))


def _block_labels(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(label (H, W), coarse (h, w)): every pixel takes the class of its nearest logit (clamped past the
    last one); pixels half way between two logits (y or x = 8i + 4) are 255.

    The coarse map is a product of a random row pattern and a random column pattern (class = 3 * row
    class + column class), so every 2x2 cell of logits is either separable or four distinct classes;
    then the argmax of the bilinear upsampling is the nearest logit, which is what "100% IoU" can
    demand (with an L-shaped cell, three equal corners outvote the nearest one, for any alignment).
    """
    h, w = -(-height // STRIDE), -(-width // STRIDE)
    gen = torch.Generator().manual_seed(seed)
    row_class, col_class = torch.randint(0, 3, (h,), generator=gen), torch.randint(0, 3, (w,), generator=gen)
    coarse = 3 * row_class[:, None] + col_class[None, :]
    rows = ((torch.arange(height) + 3) // STRIDE).clamp(max=h - 1)
    cols = ((torch.arange(width) + 3) // STRIDE).clamp(max=w - 1)
    label = coarse[rows][:, cols].clone()
    label[torch.arange(height) % STRIDE == 4, :] = 255
    label[:, torch.arange(width) % STRIDE == 4] = 255
    return label, coarse


def _miou(model: nn.Module, label: torch.Tensor, protocol: Protocol | None = None) -> dict:
    image = torch.zeros(3, *label.shape)
    image[0] = label.float().where(label != 255, torch.zeros(()))
    (acc,) = evaluate_model(model, [{"image": image, "label": label}], protocol=protocol)
    return acc.metrics()


def test_training_subsampling_of_the_block_labels_recovers_the_coarse_map():
    label, coarse = _block_labels(64, 80)
    torch.testing.assert_close(downsample_labels(label[None], tuple(coarse.shape))[0], coarse)
    torch.testing.assert_close(subsample_labels(label, tuple(coarse.shape)), coarse)


def test_label_echo_scores_100_percent_and_a_shifted_one_does_not():
    label, _ = _block_labels(64, 80)
    aligned = _miou(LabelEcho(), label)
    assert aligned["miou"] == pytest.approx(100.0) and aligned["pixel_accuracy"] == pytest.approx(100.0)
    shifted = _miou(LabelEcho(shift=STRIDE // 2), label)
    assert shifted["miou"] < 90.0


def test_the_old_align_corners_false_upsampling_would_fail_this_test():
    label, coarse = _block_labels(64, 80)
    probs = F.one_hot(coarse, NUM_CLASSES).permute(2, 0, 1)[None].float()
    ours = upsample_probs(probs, tuple(label.shape)).argmax(1)[0]
    old = F.interpolate(probs, size=tuple(label.shape), mode="bilinear", align_corners=False).argmax(1)[0]
    labelled = label != 255
    assert torch.equal(ours[labelled], label[labelled])
    assert (old[labelled] != label[labelled]).float().mean() > 0.1


def test_natural_label_map_is_exact_at_every_logit_site():
    yy, xx = torch.meshgrid(torch.arange(72), torch.arange(96), indexing="ij")
    label = torch.zeros(72, 96, dtype=torch.long)
    for k, (cy, cx, r) in enumerate([(20, 30, 15), (50, 70, 18), (40, 20, 9), (10, 80, 12)], start=1):
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    image = torch.zeros(1, 3, 72, 96)
    image[0, 0] = label.float()
    prediction = predict(LabelEcho(), image).labels[0]
    torch.testing.assert_close(prediction[::STRIDE, ::STRIDE], label[::STRIDE, ::STRIDE])
    accuracy = (prediction == label).float().mean()
    shifted = (predict(LabelEcho(shift=STRIDE // 2), image).labels[0] == label).float().mean()
    logits = LabelEcho()(image).probs
    old = F.interpolate(logits, size=(72, 96), mode="bilinear", align_corners=False).argmax(1)[0]
    assert accuracy > shifted and accuracy > (old == label).float().mean()


class RampEcho(nn.Module):
    """A "model" whose 'probabilities' are its input subsampled at pixel 8i of the view it receives."""

    num_classes, rho = 3, 1.0

    def forward(self, images: torch.Tensor, rho: float | None = None) -> CascadeOutput:
        return _output(images[:, :, ::STRIDE, ::STRIDE].clamp(min=1e-6))


@pytest.mark.parametrize("fusion", ["mean", "max_prob"])
def test_multi_scale_views_use_the_same_convention(fusion):
    """Each view is resized from the image (bilinear, align_corners=False), subsampled at its pixels 8i
    by the model and brought back: on linear ramps y and x the fused maps give back y and x exactly,
    wherever the original pixel lies within every view's logit grid (outside it the grid is clamped)."""
    height, width, scale = 64, 80, 1000.0
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width, dtype=torch.float32), indexing="ij")
    image = torch.stack([yy / scale, xx / scale, 1 - (yy + xx) / scale])[None]
    views = [View(0.5), View(0.75), View(1.0)]
    fused = predict(RampEcho(), image, views=views, fusion=fusion).probs[0]

    inside = torch.ones(height, width, dtype=torch.bool)
    for view in views:
        view_h, view_w = round(height * view.scale), round(width * view.scale)
        rows = logit_coordinates(height, view_h, -(-view_h // STRIDE), STRIDE)
        cols = logit_coordinates(width, view_w, -(-view_w // STRIDE), STRIDE)
        raw_rows = ((torch.arange(height) + 0.5) * view_h / height - 0.5) / STRIDE
        raw_cols = ((torch.arange(width) + 0.5) * view_w / width - 0.5) / STRIDE
        inside &= (rows.float() == raw_rows.float())[:, None] & (cols.float() == raw_cols.float())[None, :]
    assert inside.float().mean() > 0.5  # much of the image is checked (scale 0.5 clamps the most)
    np.testing.assert_allclose((fused[0] * scale)[inside].numpy(), yy[inside].numpy(), atol=2e-3)
    np.testing.assert_allclose((fused[1] * scale)[inside].numpy(), xx[inside].numpy(), atol=2e-3)
    # align_corners=False would have put logit i at 8i + 3.5: a 3.5 px shift at scale 1
    old = F.interpolate(RampEcho()(image).probs, size=(height, width), mode="bilinear", align_corners=False)
    assert ((old[0, 0] * scale - yy)[inside].abs().max()) > 3.0
