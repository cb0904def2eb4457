"""Training losses of the cascade variants, computed at the network's output stride.

Every stage predicts at stride 8. As in DeepLab-v2's training (its label "shrink" layer), the labels
are brought to the logits' grid by nearest-neighbour downsampling rather than the logits upsampled:
logit (i, j) is compared with the label at (floor(i * H / h), floor(j * W / w)), which for H = 8h is
the pixel (8i, 8j) that the stride-8 feature is aligned to ("same" padding). Label 255 is ignored.

A stage's loss is the cross entropy summed over the labelled pixels the stage processed (its routing
mask; stage 1 sees every pixel), divided by (train.loss_normalization)
- region: the number of those pixels, i.e. the mean over the stage's own region (Caffe's VALID
  normalisation, SoftmaxWithLoss's default; our reading: the official release, the RegionConvolution
  layer, has no loss code; the default);
- image: the number of labelled pixels in the whole batch, so a stage that sees few pixels gets a
  loss (and gradient) in proportion to its share.
A stage that received no labelled pixel contributes exactly 0 (its zero gradient still reaches the
logits, so data-parallel training sees every parameter used).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lc.data.labels import IGNORE_INDEX

LOSS_NORMALIZATIONS = ("region", "image")

__all__ = ["IGNORE_INDEX", "LOSS_NORMALIZATIONS", "StageLosses", "cascade_loss", "downsample_labels",
           "masked_cross_entropy"]


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) integer labels -> (B, h, w) by nearest neighbour (no averaging across classes)."""
    if labels.ndim != 3:
        raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    # float32 represents every label value (0..255) exactly
    small = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return small[:, 0].round().to(labels.dtype)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
                         normalization: str = "region") -> tuple[torch.Tensor, torch.Tensor]:
    """Cross entropy over the labelled pixels in `mask` (None: all), and their count (tensor).

    logits (B, K, h, w), labels (B, h, w) on the same grid, mask (B, h, w) bool. The sum is divided
    by the count (normalization "region": the mean) or by all labelled pixels of `labels` ("image").
    With no labelled pixel in the mask the loss is 0 (not NaN), with a zero gradient. No host sync.
    """
    if normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"train.loss_normalization must be one of {LOSS_NORMALIZATIONS}, "
                         f"got {normalization!r}")
    target = labels if mask is None else labels.masked_fill(~mask, IGNORE_INDEX)
    count = (target != IGNORE_INDEX).sum()
    divisor = count if normalization == "region" else (labels != IGNORE_INDEX).sum()
    # the summed loss over no pixel is 0, so clamping the divisor makes an empty stage contribute 0
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / divisor.clamp(min=1), count


@dataclass
class StageLosses:
    """The weighted total and, per stage, the loss and the fraction of pixels routed there.

    Entries are None for stages without a loss; per-stage values are detached 0-d tensors.
    """

    total: torch.Tensor
    stage_loss: list[torch.Tensor | None]
    stage_fraction: list[torch.Tensor | None]


def cascade_loss(stage_logits: Sequence[torch.Tensor | None], stage_masks: Sequence[torch.Tensor | None],
                 labels: torch.Tensor, weights: Sequence[float],
                 loss_stages: Sequence[int] | None = None, normalization: str = "region") -> StageLosses:
    """Weighted sum of the per-stage losses of one cascade forward.

    stage_logits/stage_masks: a CascadeOutput's lists (stage k's loss uses stage_masks[k]; every
    stage with a mask gets its routed fraction reported, masks of None are skipped);
    labels: (B, H, W) full-resolution labels; weights: train.stage_loss_weights;
    loss_stages: 0-based stages that carry a loss (default: every stage with logits). The irnet
    variant has logits only after stage 3, so it gets the single loss at the end;
    normalization: train.loss_normalization (see the module docstring).
    """
    if len(weights) != 3:
        raise ValueError(f"train.stage_loss_weights needs 3 values, got {list(weights)}")
    if loss_stages is None:
        loss_stages = [k for k, logits in enumerate(stage_logits) if logits is not None]
    stage_loss: list[torch.Tensor | None] = [None, None, None]
    fraction: list[torch.Tensor | None] = [None, None, None]
    total = None
    small_labels = None
    for k in loss_stages:
        logits = stage_logits[k]
        if logits is None:
            raise ValueError(f"stage {k + 1} has no logits to put a loss on")
        if small_labels is None:
            small_labels = downsample_labels(labels, tuple(logits.shape[-2:]))
        mask = stage_masks[k]
        loss, _ = masked_cross_entropy(logits, small_labels, mask, normalization)
        stage_loss[k] = loss.detach()
        term = float(weights[k]) * loss
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no stage carries a loss")
    for k, mask in enumerate(stage_masks):
        if mask is not None:
            fraction[k] = mask.float().mean()
    return StageLosses(total=total, stage_loss=stage_loss, stage_fraction=fraction)
