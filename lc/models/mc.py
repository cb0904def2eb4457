"""Model Cascade (MC): three independently trained networks of growing depth, chained by rho.

Member `members[k - 1]` (for stage k = 1, 2, 3, the paper's numbers) is an irnet-variant
`LayerCascade` truncated after stage k, with its own backbone and one head. At inference member 1
labels every pixel; a pixel whose top probability is below rho goes on to member 2, and so on, as in
LC, except that each member recomputes its features from the image (no layer is shared). Members
run densely here; the masks only select which member's prediction a pixel keeps. Member k is
trained on the pixels `passed_mask(images, k - 1)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from lc.models.cascade import (
    CascadeOutput,
    LayerCascade,
    Router,
    StageEndHook,
    _combine,
    check_routed_mask,
    undecided_mask,
)

__all__ = ["ModelCascade"]


class ModelCascade(nn.Module):
    """`members[i]` = LayerCascade(variant="irnet", depth=i + 1), the member ending at stage i + 1;
    `forward` returns a CascadeOutput."""

    def __init__(self, num_classes: int, model_cfg: Mapping, rho: float = 0.985):
        super().__init__()
        self.num_classes, self.rho = int(num_classes), float(rho)
        self.members = nn.ModuleList(
            LayerCascade(num_classes, "irnet", model_cfg, rho=rho, depth=depth) for depth in (1, 2, 3)
        )

    def _member_logits(self, k: int, images: torch.Tensor) -> torch.Tensor:
        logits = self.members[k](images, execution="dense").stage_logits[k]
        assert logits is not None
        return logits

    @torch.no_grad()
    def passed_mask(self, images: torch.Tensor, upto: int, rho: float | None = None) -> torch.Tensor:
        """(B, h, w) bool: the pixels the first `upto` members pass on (upto=0: every pixel), i.e.
        those that member `upto` + 1 (stage `upto` + 1) is trained on."""
        if upto not in (0, 1, 2):
            raise ValueError(f"upto must be 0, 1 or 2 (the member to be trained), got {upto}")
        rho = self.rho if rho is None else float(rho)
        mask: torch.Tensor | None = None
        for k in range(upto):
            undecided = undecided_mask(self._member_logits(k, images), rho)
            mask = undecided if mask is None else mask & undecided
        if mask is None:
            height, width = self.members[0].output_size(images.shape[-2], images.shape[-1])
            mask = torch.ones(images.shape[0], height, width, dtype=torch.bool, device=images.device)
        return mask

    def forward(self, images: torch.Tensor, rho: float | None = None, execution: str = "dense",
                router: Router | None = None, on_stage_end: StageEndHook | None = None) -> CascadeOutput:
        """Chain the members by the rho rule; a member runs only if some pixel reaches it.

        router and on_stage_end: the hooks of `LayerCascade.forward` (stage = member number 1-3).
        """
        if execution not in ("auto", "dense"):
            raise ValueError(f"ModelCascade runs its members densely; execution {execution!r} "
                             "is not supported")
        rho = self.rho if rho is None else float(rho)
        logits: list[torch.Tensor | None] = []
        masks: list[torch.Tensor] = []
        mask: torch.Tensor | None = None
        for k in range(3):
            if mask is not None and router is not None:
                mask = check_routed_mask(k + 1, router(k + 1, mask), mask)
            if mask is not None and not bool(mask.any()):
                masks.append(mask)
                logits.append(torch.zeros_like(logits[-1]))
                continue
            member_logits = self._member_logits(k, images)
            if mask is None:
                mask = torch.ones(member_logits.shape[0], *member_logits.shape[2:], dtype=torch.bool,
                                  device=member_logits.device)
            masks.append(mask)
            logits.append(member_logits * mask.unsqueeze(1).to(member_logits.dtype))
            mask = mask & undecided_mask(member_logits, rho)
            if on_stage_end is not None:
                on_stage_end(k + 1)
        return _combine(logits, masks, self.num_classes)
