"""Where a stride-8 logit sits in the image, and upsampling that respects it.

Convention (the one training uses, `lc.training.losses.downsample_labels`): logit i of a view is
paired with pixel 8i of that view. The receptive field supports it: with "same" padding a stride-2
conv or pool centres output i on input 2i, so after three such reductions output i is centred on
input 8i. (`F.interpolate(..., align_corners=False)` would instead centre logit i at 8i + 3.5 and
shift every prediction by 3.5 px.)

To bring a view's logits back to the original image, original pixel y is mapped into the view
(bilinear resizing with align_corners=False: u = (y + 0.5) * H_view / H - 0.5), then onto the logit
grid (c = u / stride), clamped to [0, h - 1]: pixels past the last logit take its value, as a
nearest border. At scale 1 this is c = y / 8. Values are interpolated linearly in c (separably in
rows and columns, as two matrix products).
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["DEFAULT_STRIDE", "UPSAMPLING", "logit_coordinates", "output_stride", "subsample_labels",
           "upsample_probs"]

DEFAULT_STRIDE = 8
UPSAMPLING = "bilinear on the logit grid: logit i at pixel stride*i of its view (as in training), clamped"


def output_stride(model: nn.Module) -> int:
    """The model's output stride (LayerCascade or ModelCascade), else DEFAULT_STRIDE."""
    for candidate in (model, *getattr(model, "members", [])):
        backbone = getattr(candidate, "backbone", None)
        if backbone is not None and hasattr(backbone, "output_stride"):
            return int(backbone.output_stride)
    return DEFAULT_STRIDE


def logit_coordinates(length: int, view_length: int, logits: int, stride: int,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """(length,) float: where each original pixel falls on a view's logit grid, clamped to [0, logits-1].

    length: the original image side; view_length: the same side of the resized view the network saw;
    logits: the number of logits along that side; stride: the network's output stride.
    """
    pixels = torch.arange(length, dtype=torch.float64, device=device)
    in_view = (pixels + 0.5) * (view_length / length) - 0.5
    return (in_view / stride).clamp_(0.0, float(logits - 1))


def _interpolation_matrix(coords: torch.Tensor, logits: int, dtype: torch.dtype) -> torch.Tensor:
    """(len(coords), logits): row y holds the linear-interpolation weights of fractional index coords[y]."""
    low = coords.floor().long()
    high = (low + 1).clamp_(max=logits - 1)
    weight = coords - low
    rows = torch.arange(coords.shape[0], device=coords.device)
    matrix = torch.zeros(coords.shape[0], logits, dtype=torch.float64, device=coords.device)
    matrix.index_put_((rows, low), 1 - weight, accumulate=True)
    matrix.index_put_((rows, high), weight, accumulate=True)
    return matrix.to(dtype)


def upsample_probs(probs: torch.Tensor, size: tuple[int, int], view_size: tuple[int, int] | None = None,
                   stride: int = DEFAULT_STRIDE) -> torch.Tensor:
    """(B, K, h, w) stride-`stride` maps of a view of size `view_size` -> (B, K, H, W) at `size`.

    view_size defaults to `size` (a view at scale 1). Bilinear in the aligned coordinates of the
    module docstring; a map already at `size` with view_size == size is returned unchanged.
    """
    height, width = size
    view_h, view_w = view_size or size
    if tuple(probs.shape[-2:]) == (height, width) and (view_h, view_w) == (height, width):
        return probs
    # separable: (H, h) @ probs @ (w, W), two matmuls (as fast as F.interpolate, on any device)
    rows = _interpolation_matrix(logit_coordinates(height, view_h, probs.shape[-2], stride, probs.device),
                                 probs.shape[-2], probs.dtype)
    cols = _interpolation_matrix(logit_coordinates(width, view_w, probs.shape[-1], stride, probs.device),
                                 probs.shape[-1], probs.dtype)
    return rows @ probs @ cols.T


def subsample_labels(labels: torch.Tensor, grid: tuple[int, int],
                     stride: int = DEFAULT_STRIDE) -> torch.Tensor:
    """(..., H, W) labels -> (..., h, w): the label at pixel (stride*i, stride*j), the last row/column
    repeated where the grid reaches past the image (ceil(H / stride) = h for "same" padding)."""
    rows = (torch.arange(grid[0], device=labels.device) * stride).clamp_(max=labels.shape[-2] - 1)
    cols = (torch.arange(grid[1], device=labels.device) * stride).clamp_(max=labels.shape[-1] - 1)
    return labels.index_select(-2, rows).index_select(-1, cols)
