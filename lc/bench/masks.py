"""Routing masks for timing LC without training it.

`paper_share_masks` draws spatially coherent random blobs holding exactly the paper's Table 1
stage shares at a rho (the published table is passed in: this layer reads no report files);
`TrainedMasks` takes them from a trained LC model run on real (prepared val) images. Either way a
benchmark cycles through `bench.mask_sets` different mask sets over its timed runs, handing them to
the forward through its `router=` hook (`lc.bench.models.prescribed_routing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

__all__ = ["MASK_SOURCE_PAPER", "RoutingMasks", "TrainedMasks", "mask_shares", "paper_share_masks",
           "paper_stage_shares", "routing_mask_sets"]

MASK_SOURCE_PAPER = "paper_stage_shares"
# coarse grid of the random field whose upsampling makes the blobs (cells per image side)
BLOB_GRID = 6

RoutingMasks = tuple[torch.Tensor, torch.Tensor]  # (stage-2 mask, stage-3 mask), (B, h, w) bool each


def paper_stage_shares(rho: float, table1: pd.DataFrame) -> tuple[float, float]:
    """(decided at stage 1, decided at stage 2) as fractions, from the paper's Table 1.

    table1: the published table (`lc.report.paper.load_paper_table(1)`: columns rho, stage1_pct,
    stage2_pct). Between the published thresholds the shares are interpolated linearly in rho;
    rho >= 1 means nothing leaves early.
    """
    if rho >= 1.0:
        return 0.0, 0.0
    table = table1.sort_values("rho")
    rhos = table["rho"].to_numpy(float)
    if not rhos[0] <= rho <= rhos[-1]:
        raise ValueError(f"rho {rho} lies outside the paper's Table 1 range [{rhos[0]}, {rhos[-1]}]; "
                         "its stage shares are unknown (give --checkpoint for a trained model's masks)")
    stage1 = float(np.interp(rho, rhos, table["stage1_pct"].to_numpy(float))) / 100
    stage2 = float(np.interp(rho, rhos, table["stage2_pct"].to_numpy(float))) / 100
    return stage1, stage2


def paper_share_masks(rho: float, table1: pd.DataFrame, batch: int, height: int, width: int,
                      generator: torch.Generator, device: torch.device | str = "cpu") -> RoutingMasks:
    """Stage-2 and stage-3 masks holding the paper's shares at rho, as spatially coherent blobs.

    One smooth random field per image; the round(share * h * w) highest pixels go on, so every
    image holds exactly the requested counts and the stage-3 pixels are a subset of stage 2's.
    """
    stage1, stage2 = paper_stage_shares(rho, table1)
    pixels = height * width
    passed2 = int(round((1.0 - stage1) * pixels))
    passed3 = int(round((1.0 - stage1 - stage2) * pixels))
    coarse = torch.rand(batch, 1, BLOB_GRID, BLOB_GRID, generator=generator)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    field = field + 1e-3 * torch.rand(field.shape, generator=generator)  # break ties
    ranks = field.flatten(1).argsort(dim=1, descending=True).argsort(dim=1)
    mask2 = (ranks < passed2).view(batch, height, width)
    mask3 = (ranks < passed3).view(batch, height, width)
    return mask2.to(device), mask3.to(device)


def mask_shares(masks: Sequence[RoutingMasks]) -> tuple[float, float]:
    """(stage1_pct, stage2_pct) of a list of mask sets: percent decided at stages 1 and 2."""
    passed2 = float(np.mean([float(m2.float().mean()) for m2, _ in masks]))
    passed3 = float(np.mean([float(m3.float().mean()) for _, m3 in masks]))
    return 100.0 * (1.0 - passed2), 100.0 * (passed2 - passed3)


class TrainedMasks:
    """Routing masks of a trained LC checkpoint on real images (prepared VOC val)."""

    def __init__(self, checkpoint: str | Path, cfg: dict, count: int, device: torch.device):
        from lc.data import build_dataset
        from lc.training.checkpoint import load_model

        self.checkpoint = Path(checkpoint)
        self.model = load_model(self.checkpoint, map_location=device).eval()
        if getattr(self.model, "variant", None) != "lc":
            raise ValueError(f"{self.checkpoint} holds a {getattr(self.model, 'variant', '?')!r} model; "
                             "routing masks need an LC checkpoint "
                             "(results/<preset>/runs/voc/lc/checkpoint.pt)")
        try:
            dataset = build_dataset(cfg, "voc", "val")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"masks from {self.checkpoint} need the prepared VOC val set: {exc} "
                                    f"(run `lc prepare voc --preset {cfg['preset']}`)") from exc
        if len(dataset) == 0:
            raise ValueError("the prepared VOC val list is empty; re-run `lc prepare voc`")
        self.images = [dataset[i]["image"] for i in range(min(count, len(dataset)))]
        self.device = device
        self.name = f"trained:{self.checkpoint}"

    def masks(self, rho: float, batch: int, image_hw: tuple[int, int], grid_hw: tuple[int, int],
              index: int, flip: bool = False) -> RoutingMasks:
        """The model's masks at rho for `batch` val images (starting at image `index`) resized to
        `image_hw`, on a (B, *grid_hw) grid (nearest resampling if the model's grid differs)."""
        picks = [self.images[(index * batch + b) % len(self.images)] for b in range(batch)]
        images = torch.stack([F.interpolate(im[None], size=image_hw, mode="bilinear", align_corners=False)[0]
                              for im in picks]).to(self.device)
        if flip:
            images = images.flip(-1)
        with torch.inference_mode():
            out = self.model(images, rho=rho)
        masks = []
        for mask in out.stage_masks[1:3]:
            if tuple(mask.shape[-2:]) != tuple(grid_hw):
                mask = F.interpolate(mask[:, None].float(), size=grid_hw, mode="nearest")[:, 0] > 0.5
            masks.append(mask)
        return masks[0], masks[1] & masks[0]


def routing_mask_sets(source: TrainedMasks | pd.DataFrame, rho: float, batch: int,
                      image_hw: tuple[int, int], grid_hw: tuple[int, int], count: int, seed: int,
                      device: torch.device, flip: bool = False) -> list[RoutingMasks]:
    """`count` mask sets at rho: from a trained model, or with the shares of a published Table 1."""
    if isinstance(source, TrainedMasks):
        return [source.masks(rho, batch, image_hw, grid_hw, i, flip) for i in range(count)]
    generator = torch.Generator().manual_seed(seed)
    return [paper_share_masks(rho, source, batch, *grid_hw, generator, device) for _ in range(count)]
