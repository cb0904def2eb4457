"""Device-side neighbour tables and row buckets for the planned region stages.

`RegionTables(mask, num_rows)` indexes the active pixels of a (B, H, W) bool mask as the rows of
an (R, C) matrix, R = `num_rows` >= the active count N, without a host sync: a cumsum over the
mask gives each active pixel its row (row-major (b, y, x) order, as `ActiveSet`), a scatter gives
each row its pixel. Rows N..R-1 are padding: their table entries all read the zero row and they
scatter to a dummy row that is dropped. Every table is int32 with the sentinel R ("reads zero")
and is built once per kernel geometry and source (a dict keyed by those numbers).

Buckets: R is the active count rounded up to one of at most `MAX_BUCKETS` geometric sizes per
resolution (`bucket_sizes`), so a CUDA graph or a compiled kernel can be reused across images;
picking the bucket is the one device-to-host read of a routed stage.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch

__all__ = ["BUCKET_RATIO", "MAX_BUCKETS", "RegionTables", "bucket_for", "bucket_sizes", "mean_padding"]

BUCKET_RATIO = 1.25
MAX_BUCKETS = 12


def bucket_sizes(num_pixels: int, ratio: float = BUCKET_RATIO, count: int = MAX_BUCKETS) -> tuple[int, ...]:
    """The geometric row counts ceil(P / ratio**i), i < count, ascending (at most `count`)."""
    if num_pixels < 1:
        raise ValueError(f"bucket_sizes needs at least one pixel, got {num_pixels}")
    sizes = {min(num_pixels, max(1, math.ceil(num_pixels / ratio ** i))) for i in range(count)}
    return tuple(sorted(sizes))


def bucket_for(num_active: int, num_pixels: int) -> int:
    """The smallest bucket of `num_pixels` holding `num_active` rows."""
    sizes = bucket_sizes(num_pixels)
    return sizes[bisect.bisect_left(sizes, num_active)] if num_active <= num_pixels else num_active


def mean_padding(num_pixels: int) -> float:
    """Mean share of padded rows (R - N) / R over every active count N in [1, P]."""
    sizes = bucket_sizes(num_pixels)
    total, i = 0.0, 0
    for n in range(1, num_pixels + 1):
        while sizes[i] < n:
            i += 1
        total += (sizes[i] - n) / sizes[i]
    return total / num_pixels


class RegionTables:
    """Rows of the active pixels of `mask` (B, H, W) padded to `num_rows`, with cached tables."""

    def __init__(self, mask: torch.Tensor, num_rows: int | None = None):
        if mask.dtype != torch.bool or mask.dim() != 3:
            raise ValueError(f"RegionTables needs a (B, H, W) bool mask, got {mask.dtype} "
                             f"{tuple(mask.shape)}")
        self.mask = mask
        self.batch_size, self.height, self.width = (int(s) for s in mask.shape)
        self.num_pixels = self.batch_size * self.height * self.width
        flat = mask.reshape(-1)
        if num_rows is None:  # the one device-to-host read: pick the bucket
            num_rows = bucket_for(int(flat.sum()), self.num_pixels)
        self.num_rows = int(num_rows)
        dev = mask.device
        rank = torch.cumsum(flat, 0, dtype=torch.int32) - 1
        sentinel = torch.full_like(rank, self.num_rows)
        # (P + 1,): row of each pixel, R for an inactive pixel and for the dummy pixel P
        self.row_of = torch.cat((torch.where(flat, rank, sentinel), sentinel[:1]))
        # (R,): pixel of each row, P for a padded row (inactive pixels scatter to the dummy slot R)
        index = torch.full((self.num_rows + 1,), self.num_pixels, dtype=torch.int64, device=dev)
        index.scatter_(0, self.row_of[:-1].long(), torch.arange(self.num_pixels, device=dev))
        self.pixel_of = index[: self.num_rows]
        self._tables: dict[tuple, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.mask.device

    def _coords(self) -> tuple[torch.Tensor, ...]:
        hw = self.height * self.width
        pix = self.pixel_of
        return pix // hw, (pix % hw) // self.width, pix % self.width, pix < self.num_pixels

    def table(self, kernel_size: Sequence[int], dilation: Sequence[int] = (1, 1),
              source: str | RegionTables = "active", pool: bool = False,
              source_rows: int | None = None) -> torch.Tensor:
        """(R, kh*kw) int32 rows of the source read by each row and tap (size-preserving geometry).

        source "active": our own (R, C) matrix; "dense": the stage input flattened NHWC to
        (B*H*W, C); a `RegionTables`: that set's matrix with `source_rows` rows (its row count by
        default). Sentinel: the source's row count M (reads zero); with `pool`, out-of-bounds taps
        read M + 1 (a max pool's -inf padding). Padded rows read the sentinel through every tap.
        """
        kh, kw = (int(k) for k in kernel_size)
        dh, dw = (int(d) for d in dilation)
        # the source object itself, not its id(): an id is reused once its object is freed
        key = (kh, kw, dh, dw, source, pool, source_rows)
        hit = self._tables.get(key)
        if hit is not None:
            return hit
        batch, ys, xs, real = self._coords()
        dev = self.device
        dy = (torch.arange(kh, device=dev) * dh - dh * (kh - 1) // 2).repeat_interleave(kw)
        dx = (torch.arange(kw, device=dev) * dw - dw * (kw - 1) // 2).repeat(kh)
        ny, nx = ys[:, None] + dy, xs[:, None] + dx
        inside = (ny >= 0) & (ny < self.height) & (nx >= 0) & (nx < self.width) & real[:, None]
        pos = torch.where(inside, (batch[:, None] * self.height + ny) * self.width + nx,
                          torch.full_like(ny, self.num_pixels))
        if source == "dense":
            rows, num_src = pos.to(torch.int32), self.num_pixels
        else:
            owner = self if source == "active" else source
            if owner.mask.shape != self.mask.shape:
                raise ValueError(f"RegionTables on different grids: {tuple(owner.mask.shape)} vs "
                                 f"{tuple(self.mask.shape)}")
            num_src = owner.num_rows if source_rows is None else int(source_rows)
            rows = owner.row_of[pos]
            rows = torch.where(rows >= num_src, torch.full_like(rows, num_src), rows)
        oob = num_src + 1 if pool else num_src
        rows = torch.where(inside, rows, torch.full_like(rows, oob))
        table = torch.where(real[:, None], rows, torch.full_like(rows, num_src)).to(torch.int32).contiguous()
        self._tables[key] = table
        return table

    def scatter(self, feat: torch.Tensor) -> torch.Tensor:
        """(R, C) -> (B, C, H, W) channels-last, zero at inactive pixels; padded rows dropped."""
        dense = feat.new_zeros(self.num_pixels + 1, feat.shape[1]).index_copy_(0, self.pixel_of, feat)
        return dense[: self.num_pixels].view(self.batch_size, self.height, self.width, -1).permute(0, 3, 1, 2)
