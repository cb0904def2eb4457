"""Test-time inference: the protocol's views (scales, mirror), their fusion, and the optional dense CRF.

The single-scale protocol is one view (scale 1, not mirrored). Multi-scale testing resizes the
image to every scale of `evaluate.scales` (and mirrors each when `evaluate.flip`), upsamples each
view's stride-8 class probabilities to the image size with the alignment of
`lc.evaluation.alignment` (logit i at pixel 8i of its view), un-mirrors them and fuses them by
`evaluate.fusion`:
- `max`: DeepLab-v2's fusion: per class, the largest score (logit, before the softmax) over the
  views, then the softmax; a cascade's score map is each pixel's deciding stage's logits
  (`deciding_logits`), upsampled like the probabilities;
- `max_prob`: per class, the largest probability over the views, renormalised per pixel to sum to 1;
- `mean`: the average of the views' probabilities.
The paper preset uses DeepLab-v2's protocol: scales {0.5, 0.75, 1}, max, no flip. Stage statistics
(which pixels each stage processed) come from one reference view: the unmirrored view whose scale
is closest to 1. `Protocol` bundles views, fusion and CRF; `run_protocol` is the one function that
evaluation, the test export and the Table 6 benchmark all run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lc.evaluation.alignment import UPSAMPLING, output_stride, upsample_probs
from lc.evaluation.crf import dense_crf
from lc.evaluation.stage_timer import StageTimer
from lc.models.cascade import CascadeOutput

__all__ = ["FUSIONS", "SINGLE_VIEW", "Prediction", "Protocol", "StageTimer", "View", "crf_labels",
           "deciding_logits", "predict", "protocol_from_config", "protocol_views", "reference_view",
           "resize_image", "run_protocol", "upsample_probs"]

FUSIONS = ("max", "max_prob", "mean")


@dataclass(frozen=True, order=True)
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


@dataclass
class Prediction:
    """The protocol's output for a batch of images."""

    probs: torch.Tensor  # (B, K, H, W) float32: class probabilities fused over the views
    output: CascadeOutput  # the reference view's cascade output (stride 8)
    view: View  # the reference view

    @property
    def labels(self) -> torch.Tensor:
        """(B, H, W) int64: argmax of the fused probabilities."""
        return self.probs.argmax(dim=1)


def deciding_logits(output: CascadeOutput) -> torch.Tensor:
    """(B, K, h, w): each pixel's logits from the stage that decided it (softmax = `output.probs`)."""
    logits = None
    for stage, stage_logits in enumerate(output.stage_logits, start=1):
        if stage_logits is None:
            continue
        chosen = (output.decided_at_stage == stage).unsqueeze(1)
        part = torch.where(chosen, stage_logits.float(), 0.0)
        logits = part if logits is None else logits + part
    if logits is None:
        raise ValueError("the cascade output has no stage logits")
    return logits


def _check_fusion(fusion: str) -> str:
    if fusion not in FUSIONS:
        raise ValueError(f"evaluate.fusion must be one of {FUSIONS}, got {fusion!r}")
    return fusion


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, rho: float | None = None,
            views: Sequence[View] = SINGLE_VIEW, timer: StageTimer | None = None, fusion: str = "mean",
            on_view: Callable[[View], None] | None = None,
            router: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> Prediction:
    """Run the cascade on every view of `images` (B, 3, H, W) and fuse the upsampled probabilities.

    rho overrides the model's threshold (None: the model's own). `timer`, if given and active,
    accumulates the per-stage time of every view's forward. `on_view(view)` is called right before
    each view's forward (the Table 6 benchmark selects that view's routing masks there); `router` is
    handed to the cascade's forward (`LayerCascade.forward(router=)`: prescribed routing masks).
    """
    if not views:
        raise ValueError("predict needs at least one view")
    _check_fusion(fusion)
    height, width = images.shape[-2:]
    stride = output_stride(model)
    ref = reference_view(views)
    fused: torch.Tensor | None = None
    ref_output: CascadeOutput | None = None
    for view in views:
        x = resize_image(images, view.scale)
        if view.flip:
            x = x.flip(-1)
        if on_view is not None:
            on_view(view)
        if timer is not None:
            timer.begin()
        output = model(x, rho=rho) if router is None else model(x, rho=rho, router=router)
        if timer is not None:
            timer.collect()
        scores = deciding_logits(output) if fusion == "max" and len(views) > 1 else output.probs.float()
        probs = upsample_probs(scores, (height, width), tuple(x.shape[-2:]), stride)
        if view.flip:
            probs = probs.flip(-1)
        if fused is None:
            fused = probs.clone()
        elif fusion in ("max", "max_prob"):
            torch.maximum(fused, probs, out=fused)
        else:
            fused.add_(probs)
        if view == ref:
            ref_output = output
    assert fused is not None and ref_output is not None
    if len(views) > 1 and fusion == "max":
        fused = fused.softmax(dim=1)
    elif len(views) > 1 and fusion == "max_prob":
        fused.div_(fused.sum(dim=1, keepdim=True).clamp_(min=torch.finfo(fused.dtype).tiny))
    elif len(views) > 1:
        fused.div_(len(views))
    return Prediction(probs=fused, output=ref_output, view=ref)


def crf_labels(images: torch.Tensor, probs: torch.Tensor, crf_cfg: Mapping) -> torch.Tensor:
    """(B, H, W) int64 labels of the dense CRF (`lc.evaluation.crf`) on each image of the batch, on the
    probabilities' device; images are the normalised (B, 3, H, W) network inputs."""
    from lc.data import denormalize

    host = probs.float().cpu().numpy()
    labels = [dense_crf(denormalize(images[b]), host[b], crf_cfg) for b in range(host.shape[0])]
    return torch.from_numpy(np.stack(labels)).to(probs.device)


@dataclass(frozen=True)
class Protocol:
    """A test protocol: the views, how they are fused, and the dense CRF parameters (None: no CRF)."""

    views: tuple[View, ...] = SINGLE_VIEW
    fusion: str = "mean"
    crf: Mapping | None = None

    def __post_init__(self) -> None:
        _check_fusion(self.fusion)
        if not self.views:
            raise ValueError("a protocol needs at least one view")

    @property
    def scales(self) -> list[float]:
        return [v.scale for v in self.views if not v.flip]

    @property
    def flip(self) -> bool:
        return any(v.flip for v in self.views)

    def describe(self) -> dict:
        """What the JSON reports record under "protocol"."""
        return {"scales": self.scales, "flip": self.flip,
                "fusion": self.fusion if len(self.views) > 1 else "none (one view)",
                "crf": self.crf is not None, "crf_params": None if self.crf is None else dict(self.crf),
                "upsampling": UPSAMPLING}


def protocol_from_config(evaluate_cfg: Mapping, multi_scale: bool = False, crf: bool = False) -> Protocol:
    """The protocol of the config's `evaluate` section: single scale, or multi-scale (evaluate.scales,
    evaluate.flip, evaluate.fusion), with or without the dense CRF (evaluate.crf)."""
    views = (tuple(protocol_views(evaluate_cfg["scales"], bool(evaluate_cfg.get("flip", False))))
             if multi_scale else SINGLE_VIEW)
    return Protocol(views=views, fusion=str(evaluate_cfg.get("fusion", "mean")),
                    crf=dict(evaluate_cfg["crf"]) if crf else None)


def run_protocol(model: nn.Module, images: torch.Tensor, protocol: Protocol, rho: float | None = None,
                 timer: StageTimer | None = None,
                 on_view: Callable[[View], None] | None = None,
                 router: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                 ) -> tuple[torch.Tensor, Prediction]:
    """(labels (B, H, W) int64, fused prediction) of `images` under `protocol`: the views, their fusion,
    then the argmax or the dense CRF."""
    prediction = predict(model, images, rho=rho, views=protocol.views, timer=timer, fusion=protocol.fusion,
                         on_view=on_view, router=router)
    if protocol.crf is None:
        return prediction.labels, prediction
    return crf_labels(images, prediction.probs, protocol.crf), prediction
