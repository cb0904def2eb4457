"""Test-time inference: one cascade forward per view (scale, mirror), probabilities averaged at full size.

The single-scale protocol is one view (scale 1, not mirrored). Multi-scale testing (Table 6) resizes
the image to every scale of `evaluate.scales` (and mirrors each when `evaluate.flip`), upsamples
each view's stride-8 class probabilities bilinearly to the image size, un-mirrors them and takes
the mean. Stage statistics (which pixels each stage processed) come from one reference view: the
unmirrored view whose scale is closest to 1.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lc.models.cascade import CascadeOutput, LayerCascade
from lc.models.mc import ModelCascade

__all__ = ["Prediction", "StageTimer", "View", "predict", "protocol_views", "reference_view",
           "resize_image", "upsample_probs"]


@dataclass(frozen=True)
class View:
    """One test-time view of an image: resized by `scale`, mirrored left-right when `flip`."""

    scale: float
    flip: bool = False


SINGLE_VIEW: tuple[View, ...] = (View(1.0, False),)


def protocol_views(scales: Sequence[float], flip: bool) -> list[View]:
    """Every (scale, mirror) view of the protocol, scales in the given order."""
    if not scales:
        raise ValueError("evaluate.scales is empty; give at least one scale (e.g. [1.0])")
    if any(float(s) <= 0 for s in scales):
        raise ValueError(f"evaluate.scales must be positive, got {list(scales)}")
    return [View(float(s), f) for s in scales for f in ((False, True) if flip else (False,))]


def reference_view(views: Sequence[View]) -> View:
    """The view stage statistics are read from: unmirrored (if any), scale closest to 1."""
    candidates = [v for v in views if not v.flip] or list(views)
    return min(candidates, key=lambda v: (abs(np.log(v.scale)), v.scale))


def resize_image(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resize of (B, 3, H, W) normalised images by `scale` (at least 1 pixel a side)."""
    height, width = images.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size == (height, width):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def upsample_probs(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, K, h, w) stride-8 probabilities -> (B, K, H, W), bilinear (as DeepLab evaluates)."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs, size=size, mode="bilinear", align_corners=False)


@dataclass
class Prediction:
    """The protocol's output for a batch of images."""

    probs: torch.Tensor  # (B, K, H, W) float32: class probabilities averaged over the views
    output: CascadeOutput  # the reference view's cascade output (stride 8)
    view: View  # the reference view

    @property
    def labels(self) -> torch.Tensor:
        """(B, H, W) int64: argmax of the averaged probabilities."""
        return self.probs.argmax(dim=1)


class StageTimer:
    """Wall time per stage of a cascade's forward passes, summed over the passes it saw.

    It wraps the per-stage calls of the model instance while active (`with timer:`): for a
    LayerCascade the end of each stage's head (stage k = from the end of head k-1, or the start of
    the forward, to the end of head k, routing included); for a ModelCascade each member's
    forward. On CUDA it records events (no synchronisation inside the forward), on the CPU reads
    the clock. `available` is False for models of another kind.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, torch.device(device)
        if isinstance(model, ModelCascade):
            self._target = "_member_logits"
        elif isinstance(model, LayerCascade):
            self._target = "_run_head"
        else:
            self._target = None
        self.seconds = np.zeros(3)
        self._marks: list[tuple[int | None, object]] = []

    @property
    def available(self) -> bool:
        return self._target is not None and hasattr(self.model, self._target)

    def _mark(self, stage: int | None) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append((stage, event))
        else:
            self._marks.append((stage, time.perf_counter()))

    def begin(self) -> None:
        """Call right before a forward: the start of stage 1 (LayerCascade)."""
        self._marks = []
        self._mark(None)

    def collect(self) -> None:
        """Call after a forward: add each stage's time to `seconds`."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        for (_, before), (stage, after) in zip(self._marks, self._marks[1:], strict=False):
            if stage is None:
                continue  # a "begin" mark: the time before it belongs to no stage
            if self.device.type == "cuda":
                self.seconds[stage] += before.elapsed_time(after) / 1000.0
            else:
                self.seconds[stage] += after - before
        self._marks = []

    def __enter__(self) -> StageTimer:
        if not self.available:
            return self
        original = getattr(self.model, self._target)
        if self._target == "_run_head":
            def timed(stage: int, *args, **kwargs):
                result = original(stage, *args, **kwargs)
                self._mark(stage - 1)
                return result
        else:
            def timed(k: int, *args, **kwargs):
                self._mark(None)
                result = original(k, *args, **kwargs)
                self._mark(k)
                return result
        setattr(self.model, self._target, timed)  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        if self.available and self._target in vars(self.model):
            delattr(self.model, self._target)


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, rho: float | None = None,
            views: Sequence[View] = SINGLE_VIEW, timer: StageTimer | None = None) -> Prediction:
    """Run the cascade on every view of `images` (B, 3, H, W) and average the upsampled probabilities.

    rho overrides the model's threshold (None: the model's own). `timer`, if given and active,
    accumulates the per-stage time of every view's forward.
    """
    if not views:
        raise ValueError("predict needs at least one view")
    height, width = images.shape[-2:]
    ref = reference_view(views)
    total: torch.Tensor | None = None
    ref_output: CascadeOutput | None = None
    for view in views:
        x = resize_image(images, view.scale)
        if view.flip:
            x = x.flip(-1)
        if timer is not None:
            timer.begin()
        output = model(x, rho=rho)
        if timer is not None:
            timer.collect()
        probs = upsample_probs(output.probs.float(), (height, width))
        if view.flip:
            probs = probs.flip(-1)
        total = probs.clone() if total is None else total.add_(probs)
        if view == ref:
            ref_output = output
    assert total is not None and ref_output is not None
    return Prediction(probs=total.div_(len(views)), output=ref_output, view=ref)
