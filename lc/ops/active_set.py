"""The active pixels of a region: index bookkeeping shared by every region conv of a stage.

An `ActiveSet` is built once per stage from a (B, H, W) bool mask. Features of the active pixels
live as an (N, C) matrix whose row i is the pixel `flat_index[i]` of the dense (B, H, W) grid, in
row-major (b, y, x) order. Neighbour tables map each active pixel and kernel tap to a row of a
source matrix; the index equal to the source's row count M means "read zero".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Pair = tuple[int, int]


def as_pair(value: int | Sequence[int], name: str) -> Pair:
    """(v, v) for an int, the two ints of a pair; ValueError otherwise."""
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return values  # type: ignore[return-value]


def normalise_mask(mask: torch.Tensor) -> torch.Tensor:
    """A (B, H, W) bool mask from a (B, H, W) or (B, 1, H, W) bool or 0/1 tensor."""
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"a 4-d mask must be (B, 1, H, W), got {tuple(mask.shape)}")
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise ValueError(f"mask must be (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("a non-bool mask must hold only 0 and 1; threshold it first (mask > 0.5)")
    return mask != 0


class ActiveSet:
    """The active pixels of a (B, H, W) bool mask, with cached neighbour tables."""

    def __init__(self, mask: torch.Tensor):
        if mask.dtype != torch.bool or mask.dim() != 3:
            raise ValueError("ActiveSet needs a (B, H, W) bool mask; use ActiveSet.from_mask")
        self.mask = mask
        self.batch_size, self.height, self.width = (int(s) for s in mask.shape)
        self.flat_index = mask.reshape(-1).nonzero().squeeze(1)  # (N,) positions in the dense grid
        self.num_active = int(self.flat_index.numel())
        self._row_of: torch.Tensor | None = None
        self._tables: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> ActiveSet:
        """Build from a (B, H, W) or (B, 1, H, W) mask, bool or 0/1 (gradient-free)."""
        return cls(normalise_mask(mask.detach()))

    @property
    def device(self) -> torch.device:
        return self.mask.device

    @property
    def num_pixels(self) -> int:
        return self.batch_size * self.height * self.width

    @property
    def fraction(self) -> float:
        return self.num_active / max(1, self.num_pixels)

    def __repr__(self) -> str:
        return (f"ActiveSet(shape=({self.batch_size}, {self.height}, {self.width}), "
                f"num_active={self.num_active})")

    @property
    def row_of(self) -> torch.Tensor:
        """(B*H*W,) row of each dense pixel in the active matrix; N for an inactive pixel."""
        if self._row_of is None:
            row_of = torch.full((self.num_pixels,), self.num_active, dtype=torch.long, device=self.device)
            row_of[self.flat_index] = torch.arange(self.num_active, device=self.device)
            self._row_of = row_of
        return self._row_of

    # --- dense <-> compressed ----------------------------------------------------------------
    def gather(self, x_dense: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (N, C): the features of the active pixels."""
        self._check_dense(x_dense)
        channels = x_dense.shape[1]
        if x_dense.is_contiguous(memory_format=torch.channels_last):
            rows = x_dense.permute(0, 2, 3, 1).reshape(-1, channels)  # a view: no copy
            return rows.index_select(0, self.flat_index)
        batch = torch.div(self.flat_index, self.height * self.width, rounding_mode="floor")
        pos = self.flat_index - batch * (self.height * self.width)
        return x_dense.flatten(2)[batch, :, pos]

    def scatter(self, feat: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (B, C, H, W), zero at inactive pixels (channels-last memory)."""
        if feat.dim() != 2 or feat.shape[0] != self.num_active:
            raise ValueError(f"scatter needs an ({self.num_active}, C) matrix, got {tuple(feat.shape)}")
        dense = feat.new_zeros(self.num_pixels, feat.shape[1]).index_copy(0, self.flat_index, feat)
        return dense.view(self.batch_size, self.height, self.width, -1).permute(0, 3, 1, 2)

    def rows_in(self, source: ActiveSet) -> torch.Tensor:
        """(N,) row of each of our pixels in `source`'s matrix; our pixels must be a subset."""
        self._check_same_grid(source)
        key = ("rows_in", source)
        if key not in self._tables:
            rows = source.row_of.index_select(0, self.flat_index)
            if self.num_active and bool((rows == source.num_active).any()):
                raise ValueError("this ActiveSet is not a subset of the source ActiveSet")
            self._tables[key] = rows
        return self._tables[key]

    # --- neighbour tables --------------------------------------------------------------------
    def neighbour_positions(
        self, kernel_size: Pair, dilation: Pair, padding: Pair, input_size: Pair | None = None
    ) -> torch.Tensor:
        """(N, kh*kw) flat position of each tap in a (B, Hin, Win) input grid; -1 out of bounds.

        Output pixel (y, x) reads input (y - ph + i*dh, x - pw + j*dw), taps in (i, j) row-major
        order, which is the layout of a conv weight (Cout, Cin, kh, kw).
        """
        (kh, kw), (dh, dw), (ph, pw) = kernel_size, dilation, padding
        hin, win = input_size or (self.height, self.width)
        hw = self.height * self.width
        batch = torch.div(self.flat_index, hw, rounding_mode="floor")
        rem = self.flat_index - batch * hw
        ys = torch.div(rem, self.width, rounding_mode="floor")
        xs = rem - ys * self.width
        dev = self.device
        dy = (torch.arange(kh, device=dev) * dh - ph).repeat_interleave(kw)
        dx = (torch.arange(kw, device=dev) * dw - pw).repeat(kh)
        ny = ys[:, None] + dy[None, :]
        nx = xs[:, None] + dx[None, :]
        inside = (ny >= 0) & (ny < hin) & (nx >= 0) & (nx < win)
        pos = batch[:, None] * (hin * win) + ny * win + nx
        return torch.where(inside, pos, torch.full_like(pos, -1))

    def neighbour_table(
        self,
        kernel_size: int | Sequence[int],
        dilation: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        source: str | ActiveSet = "active",
        input_size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """(N, kh*kw) LongTensor of source rows read by each active pixel and tap (cached).

        source "active": rows of our (N, C) matrix (inactive neighbours read zero);
        "dense": rows of the dense input flattened NHWC to (B*Hin*Win, C) (`input_size` (Hin, Win)
        when it differs from the mask's grid); an `ActiveSet`: rows of that set's matrix on the
        same grid (e.g. stage 3 reading stage 2's compressed output). Entry M (the source's row
        count) means "read zero": an out-of-bounds or inactive neighbour.
        """
        ks, dil, pad = as_pair(kernel_size, "kernel_size"), as_pair(dilation, "dilation"), \
            as_pair(padding, "padding")
        in_size = as_pair(input_size, "input_size") if input_size is not None else None
        key = (ks, dil, pad, source, in_size)
        table = self._tables.get(key)
        if table is None:
            table = self._build_table(ks, dil, pad, source, in_size, out_of_bounds=None)
            self._tables[key] = table
        return table

    def pool_table(self, kernel_size: int | Sequence[int], padding: int | Sequence[int],
                   source: str | ActiveSet = "dense",
                   input_size: Sequence[int] | None = None) -> torch.Tensor:
        """Like `neighbour_table`, but out-of-bounds taps read row M+1 (the pool's -inf padding)."""
        ks, pad = as_pair(kernel_size, "kernel_size"), as_pair(padding, "padding")
        in_size = as_pair(input_size, "input_size") if input_size is not None else None
        key = ("pool", ks, pad, source, in_size)
        table = self._tables.get(key)
        if table is None:
            table = self._build_table(ks, (1, 1), pad, source, in_size, out_of_bounds="pad_row")
            self._tables[key] = table
        return table

    def source_rows(self, source: str | ActiveSet, input_size: Pair | None = None) -> int:
        """M: the row count of a source matrix."""
        if source == "dense":
            hin, win = input_size or (self.height, self.width)
            return self.batch_size * hin * win
        if source == "active":
            return self.num_active
        if isinstance(source, ActiveSet):
            return source.num_active
        raise ValueError(f"source must be 'active', 'dense' or an ActiveSet, got {source!r}")

    def _build_table(self, ks: Pair, dil: Pair, pad: Pair, source: str | ActiveSet, in_size: Pair | None,
                     out_of_bounds: str | None) -> torch.Tensor:
        num_rows = self.source_rows(source, in_size)
        if source != "dense" and in_size is not None and in_size != (self.height, self.width):
            raise ValueError("input_size may differ from the mask's grid only for source='dense'")
        pos = self.neighbour_positions(ks, dil, pad, in_size)
        inside = pos >= 0
        safe = pos.clamp(min=0)
        if source == "dense":
            rows = safe
        else:
            owner = self if source == "active" else source
            self._check_same_grid(owner)
            rows = owner.row_of[safe]  # inactive pixels map to M already
        fill = num_rows + 1 if out_of_bounds == "pad_row" else num_rows
        return torch.where(inside, rows, torch.full_like(rows, fill))

    def _check_dense(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or (x.shape[0], x.shape[2], x.shape[3]) != (self.batch_size, self.height,
                                                                    self.width):
            raise ValueError(f"expected a dense (B={self.batch_size}, C, H={self.height}, "
                             f"W={self.width}) tensor, got {tuple(x.shape)}")

    def check_stage_input(self, x: torch.Tensor, source: ActiveSet | None = None) -> None:
        """A region stage's input: dense (B, C, H, W) on this grid, or with `source` (a larger set)
        that set's (M, C) matrix."""
        if source is None:
            self._check_dense(x)
        elif x.dim() != 2 or x.shape[0] != source.num_active:
            raise ValueError(f"with a source ActiveSet x must be its ({source.num_active}, C) matrix, "
                             f"got {tuple(x.shape)}")

    def _check_same_grid(self, other: ActiveSet) -> None:
        if other.mask.shape != self.mask.shape:
            raise ValueError(f"ActiveSets on different grids: {tuple(self.mask.shape)} vs "
                             f"{tuple(other.mask.shape)}")
