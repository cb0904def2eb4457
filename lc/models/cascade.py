"""Layer Cascade (LC): a backbone (IRNet by default; `lc.models.backbones`) cut into three stages,
each with a head, routed by confidence.

A pixel is decided at stage k when its top softmax probability at stage k is larger than rho; only
undecided pixels go on to stage k+1, which runs on them alone (region convolution). Variants:
- `irnet`: one head after the last stage, no routing (the single-loss baseline);
- `dsn`: deep supervision, a head after every stage and every pixel through every stage;
- `dsn_dropout`: as dsn, but in training stages 2 and 3 see a random subset of pixels of exactly
  the size LC's rule would pass, per image (our reading of the paper's "DSN + Dropout"): stage 2
  gets as many pixels as have stage-1 confidence <= rho; stage 3 as many of stage 2's pixels as
  have stage-2 confidence <= rho. At evaluation it behaves as dsn;
- `lc`: the Layer Cascade, rho routing in training and evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lc.models.backbone import freeze_batchnorm
from lc.models.backbones import build_backbone
from lc.models.variants import VARIANTS as VARIANT_TABLE
from lc.ops.active_set import ActiveSet
from lc.ops.region_conv import compressed_conv, linear_rows

VARIANTS = tuple(name for name, v in VARIANT_TABLE.items() if v.model_kind == "cascade")
EXECUTIONS = ("auto", "compressed", "masked_dense", "dense")

__all__ = ["CascadeOutput", "LayerCascade", "Router", "StageEndHook", "StageHead", "VARIANTS",
           "check_routed_mask", "init_from_irnet", "undecided_mask"]

# Routing hook of `LayerCascade.forward`: router(stage, proposed) -> the (B, h, w) bool mask stage
# `stage` (2 or 3) runs on, given the mask `proposed` that the model's own rule chose (computed
# before the call, so a benchmark that prescribes masks still pays for the routing decision).
Router = Callable[[int, torch.Tensor], torch.Tensor]
# Called with the stage number (1, 2, 3) right after that stage's head has run (timers).
StageEndHook = Callable[[int], None]


@dataclass
class CascadeOutput:
    """What every cascade returns; all maps at the backbone's output stride (h = H/8)."""

    stage_logits: list[torch.Tensor | None]  # 3 x (B, K, h, w), zero outside the stage's mask
    stage_masks: list[torch.Tensor]  # 3 x (B, h, w) bool: the pixels each stage processed
    decided_at_stage: torch.Tensor  # (B, h, w) uint8 in 1..3
    probs: torch.Tensor  # (B, K, h, w): softmax of each pixel's deciding stage


def undecided_mask(logits: torch.Tensor, rho: float) -> torch.Tensor:
    """(B, h, w) bool: pixels whose top softmax probability is not larger than rho (the paper accepts a
    pixel when its score is larger than rho); rho >= 1: every pixel."""
    if rho >= 1.0:
        return torch.ones(logits.shape[0], *logits.shape[2:], dtype=torch.bool, device=logits.device)
    with torch.no_grad():
        return logits.detach().softmax(dim=1).amax(dim=1) <= rho


def check_routed_mask(stage: int, mask: torch.Tensor, proposed: torch.Tensor) -> torch.Tensor:
    """`mask` if it is a bool mask of `proposed`'s shape and device, else a ValueError (router bugs)."""
    if mask.dtype != torch.bool or mask.shape != proposed.shape or mask.device != proposed.device:
        raise ValueError(f"the router returned a {mask.dtype} mask of shape {tuple(mask.shape)} on "
                         f"{mask.device} for stage {stage}; it must be bool {tuple(proposed.shape)} on "
                         f"{proposed.device}")
    return mask


def random_subset(candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """A (B, h, w) bool mask with counts[b] pixels drawn uniformly from candidates[b]."""
    flat = candidates.flatten(1)
    scores = torch.rand(flat.shape, device=flat.device)
    scores[~flat] = 2.0  # non-candidates sort last
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < counts.view(-1, 1)).view_as(candidates)


class StageHead(nn.Module):
    """kxk conv -> ReLU -> 1x1 conv to class logits (both with bias)."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"head_kernel must be odd (a size-preserving conv), got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, mid_channels, kernel_size, padding=kernel_size // 2)
        self.act = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.act(self.conv(x)))

    def forward_masked(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Region semantics written densely: every conv output multiplied by the mask."""
        m = mask.unsqueeze(1).to(x.dtype)
        return m * self.classifier(self.act(m * self.conv(x)))

    def forward_compressed(self, feat: torch.Tensor, active: ActiveSet) -> torch.Tensor:
        """(N, C) stage features of `active` -> (N, K) logits; inactive neighbours read zero."""
        hidden = compressed_conv(feat, active, self.conv.weight, self.conv.bias, self.conv.padding)
        return linear_rows(F.relu(hidden, inplace=True), self.classifier.weight.flatten(1),
                           self.classifier.bias)


class _StageFeatures:
    """A stage's output: dense (B, C, h, w) or compressed (N, C) on an ActiveSet."""

    def __init__(self, dense: torch.Tensor | None = None, feat: torch.Tensor | None = None,
                 active: ActiveSet | None = None):
        self.dense, self.feat, self.active = dense, feat, active


class LayerCascade(nn.Module):
    """IRNet-LC and its ablations (see the module docstring); `forward` returns a CascadeOutput."""

    def __init__(self, num_classes: int, variant: str, model_cfg: Mapping, rho: float = 0.985,
                 depth: int = 3):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if depth not in (1, 2, 3):
            raise ValueError(f"depth must be 1, 2 or 3, got {depth}")
        if variant != "irnet" and depth != 3:
            raise ValueError(f"only the irnet variant can be truncated (depth {depth} for {variant!r})")
        self.num_classes, self.variant, self.depth, self.rho = int(num_classes), variant, depth, float(rho)
        self.freeze_bn = bool(model_cfg.get("freeze_bn", True))
        self.backbone = build_backbone(model_cfg)  # model.backbone: irnet (default), resnet, ...
        self.backbone.drop_stages(depth)  # a truncated backbone (Model Cascade member) lacks these
        head_stages = [depth] if variant == "irnet" else list(range(1, depth + 1))
        for stage in head_stages:
            self.add_module(f"head{stage}", StageHead(self.backbone.stage_channels[stage - 1],
                                                      int(model_cfg["head_channels"]), num_classes,
                                                      int(model_cfg.get("head_kernel", 3))))
        if self.freeze_bn:
            freeze_batchnorm(self)

    def train(self, mode: bool = True) -> LayerCascade:
        super().train(mode)
        if self.freeze_bn:
            freeze_batchnorm(self)  # frozen BN stays in eval mode whatever the model's mode
        return self

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) of the stage maps for an image of height x width (from the stem geometry)."""
        return self.backbone.output_size(height, width)

    def head(self, stage: int) -> StageHead | None:
        """The head after stage 1..3, or None."""
        return getattr(self, f"head{stage}", None)

    @property
    def routes(self) -> bool:
        """Whether this forward selects pixels (lc always, dsn_dropout while training)."""
        spec = VARIANT_TABLE[self.variant]
        return spec.routed and (self.training or spec.routed_at_eval)

    # --- routing ------------------------------------------------------------------------------
    def _next_mask(self, logits: torch.Tensor | None, mask: torch.Tensor, rho: float) -> torch.Tensor:
        if logits is None or not self.routes:
            return mask
        undecided = undecided_mask(logits, rho) & mask
        if self.variant == "lc":
            return undecided
        return random_subset(mask, undecided.flatten(1).sum(dim=1))  # dsn_dropout: same count

    # --- stages -------------------------------------------------------------------------------
    def _run_stage(self, stage: int, prev: _StageFeatures, mask: torch.Tensor,
                   execution: str) -> _StageFeatures:
        """Stage 2 or 3 on the pixels of `mask`."""
        full = bool(mask.all())
        if execution == "dense" or (execution == "auto" and full):
            if not full:
                raise ValueError("execution='dense' needs every pixel active; use 'compressed' or "
                                 "'masked_dense' for a routed forward")
            x = prev.dense if prev.dense is not None else prev.active.scatter(prev.feat)
            return _StageFeatures(dense=self.backbone.forward_stage(stage, x))
        if execution == "masked_dense":
            return _StageFeatures(dense=self.backbone.run_stage_masked_dense(stage, prev.dense, mask))
        active = ActiveSet(mask)
        if prev.dense is not None:
            feat = self.backbone.run_stage_region(stage, prev.dense, active)
        else:
            feat = self.backbone.run_stage_region(stage, prev.feat, active, source=prev.active)
        return _StageFeatures(feat=feat, active=active)

    def _run_head(self, stage: int, feats: _StageFeatures, mask: torch.Tensor,
                  execution: str) -> torch.Tensor | None:
        head = self.head(stage)
        if head is None:
            return None
        if feats.feat is not None:
            return feats.active.scatter(head.forward_compressed(feats.feat, feats.active))
        if execution == "masked_dense" and not bool(mask.all()):
            return head.forward_masked(feats.dense, mask)
        return head(feats.dense)

    def forward(self, images: torch.Tensor, rho: float | None = None, execution: str = "auto",
                router: Router | None = None, on_stage_end: StageEndHook | None = None) -> CascadeOutput:
        """Run the cascade; rho (default self.rho) routes lc, and dsn_dropout in training only.

        execution: "compressed" (region path), "masked_dense" (the dense reference), "dense"
        (plain, every pixel must be active), "auto" (per stage: dense when every pixel reaches
        it, compressed otherwise; so dense throughout for irnet, dsn and dsn_dropout at evaluation).
        router: the routing hook (see `Router`): called once before stages 2 and 3 with the mask
        the model's rule chose; the stage runs on the mask it returns (benchmarks prescribe masks).
        on_stage_end: called with 1, 2, 3 after each stage's head (per-stage timers).
        """
        rho = self.rho if rho is None else float(rho)
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")

        f1 = self.backbone.forward_stage(1, images)
        batch, _, height, width = f1.shape
        mask = torch.ones(batch, height, width, dtype=torch.bool, device=f1.device)
        feats = _StageFeatures(dense=f1)
        logits: list[torch.Tensor | None] = [None, None, None]
        masks = [mask]
        logits[0] = self._run_head(1, feats, mask, execution)
        if on_stage_end is not None:
            on_stage_end(1)
        for stage in range(2, self.depth + 1):
            proposed = self._next_mask(logits[stage - 2], mask, rho)
            mask = proposed if router is None else check_routed_mask(stage, router(stage, proposed), proposed)
            masks.append(mask)
            feats = self._run_stage(stage, feats, mask, execution)
            logits[stage - 1] = self._run_head(stage, feats, mask, execution)
            if on_stage_end is not None:
                on_stage_end(stage)
        while len(masks) < 3:  # stages a truncated network does not have
            masks.append(torch.zeros_like(mask))
        return _combine(logits, masks, self.num_classes)


def _combine(logits: list[torch.Tensor | None], masks: list[torch.Tensor], num_classes: int) -> CascadeOutput:
    """decided_at_stage and probs: a pixel is decided at the last stage that processed it."""
    ref = next(lg for lg in logits if lg is not None)
    batch, _, height, width = ref.shape
    probs = ref.new_zeros(batch, num_classes, height, width)
    decided = torch.zeros(batch, height, width, dtype=torch.uint8, device=ref.device)
    for k in range(3):
        next_mask = masks[k + 1] if k < 2 else torch.zeros_like(masks[k])
        here = masks[k] & ~next_mask
        if logits[k] is None:
            if bool(here.any()):
                raise RuntimeError(f"pixels end at stage {k + 1}, which has no head")
            continue
        probs = torch.where(here.unsqueeze(1), logits[k].softmax(dim=1), probs)
        decided[here] = k + 1
    return CascadeOutput(stage_logits=logits, stage_masks=masks, decided_at_stage=decided, probs=probs)


def init_from_irnet(model: LayerCascade, irnet_state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load the backbone and head3 of a trained irnet-variant model into a dsn/dsn_dropout/lc model.

    Only head1.* and head2.* may be missing; anything else missing, unexpected or misshaped fails.
    """
    bad = [k for k, v in irnet_state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"init_from_irnet needs a model state_dict (tensors only), got entries "
                         f"{bad[:5]}; pass checkpoint['model'] or similar")
    ours = model.state_dict()
    allowed_missing = {k for k in ours if k.startswith(("head1.", "head2."))}
    problems = [f"unexpected tensor {k}" for k in irnet_state_dict if k not in ours]
    problems += [f"missing tensor {k}" for k in ours
                 if k not in irnet_state_dict and k not in allowed_missing]
    problems += [f"tensor {k} in the checkpoint, but a cascade initialised from irnet trains it afresh"
                 for k in allowed_missing if k in irnet_state_dict]
    problems += [f"shape mismatch {k}: ours {tuple(ours[k].shape)}, checkpoint {tuple(v.shape)}"
                 for k, v in irnet_state_dict.items() if k in ours and ours[k].shape != v.shape]
    if problems:
        head = "\n  ".join(problems[:20])
        raise ValueError(f"the irnet state dict does not fit this {model.variant} model "
                         f"({len(problems)} problems):\n  {head}")
    model.load_state_dict(dict(irnet_state_dict), strict=False)
