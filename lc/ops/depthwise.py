"""Depthwise region convolution: a kxk conv with one filter per channel (groups = channels) at the
active pixels only, through the same neighbour tables as `lc.ops.region_conv.gather_conv`.

`depthwise_gather(src, table, weight, bias)`: out[i, c] = sum_t src[table[i, t], c] * weight[c, t]
+ bias[c], for src (M, C), table (N, T) (an entry outside [0, M), M itself, reads zero), weight
(C, 1, kh, kw) or (C, T). The torch path gathers the (N, T, C) taps and reduces them; CUDA
tensors (or Triton's interpreter) take the Triton kernel of `lc.ops.triton.depthwise`.
`depthwise_conv(feat, active, weight, bias, padding, dilation, source)` is the size-preserving conv
on a stage's rows, as `compressed_conv` / `dense_input_conv` are for dense convs.
"""

from __future__ import annotations

import torch

from lc.ops.active_set import ActiveSet, as_pair

__all__ = ["depthwise_conv", "depthwise_gather"]


def _taps(weight: torch.Tensor) -> torch.Tensor:
    """(C, T) filter taps from a (C, 1, kh, kw) depthwise weight (or (C, T) as it is)."""
    if weight.dim() == 4:
        if weight.shape[1] != 1:
            raise ValueError(f"a depthwise weight is (C, 1, kh, kw), got {tuple(weight.shape)}")
        return weight.flatten(1)
    if weight.dim() != 2:
        raise ValueError(f"a depthwise weight is (C, 1, kh, kw) or (C, T), got {tuple(weight.shape)}")
    return weight


def _depthwise_torch(src: torch.Tensor, table: torch.Tensor, taps: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    padded = torch.cat((src, src.new_zeros(1, src.shape[1])))
    num_src = src.shape[0]
    rows = torch.where((table >= 0) & (table < num_src), table, num_src)  # outside [0, M): the zero row
    out = torch.einsum("ntc,ct->nc", padded[rows], taps)
    return out if bias is None else out + bias


def depthwise_gather(src: torch.Tensor, table: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """(N, C) depthwise conv outputs at the rows of `table` (see the module docstring).

    backend: "auto" (the Triton kernel for CUDA tensors when triton imports, else torch), "torch",
    "triton" (CUDA tensors, or CPU ones under Triton's interpreter: TRITON_INTERPRET=1 before import).
    """
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be auto, torch or triton, got {backend!r}")
    taps = _taps(weight)
    if src.dim() != 2 or table.dim() != 2 or taps.shape != (src.shape[1], table.shape[1]):
        raise ValueError(f"depthwise_gather needs src (M, C), table (N, T), weight (C, T); got "
                         f"{tuple(src.shape)}, {tuple(table.shape)}, {tuple(taps.shape)}")
    if backend == "triton" or (backend == "auto" and src.is_cuda):
        try:
            from lc.ops.triton.depthwise import depthwise_gather as triton_depthwise
        except ImportError:
            if backend == "triton":
                raise
        else:
            return triton_depthwise(src, table, taps, bias)
    return _depthwise_torch(src, table, taps, bias)


def depthwise_conv(x: torch.Tensor, active: ActiveSet, weight: torch.Tensor, bias: torch.Tensor | None,
                   padding=0, dilation=1, source: str | ActiveSet = "active",
                   backend: str = "auto") -> torch.Tensor:
    """A size-preserving depthwise conv -> (N_active, C). `x`: our (N, C) rows (source "active"), the
    dense (B, C, H, W) stage input ("dense"), or the (M, C) rows of a larger ActiveSet `source`."""
    kh, kw = weight.shape[-2:]
    pad, dil = as_pair(padding, "padding"), as_pair(dilation, "dilation")
    if 2 * pad[0] != dil[0] * (kh - 1) or 2 * pad[1] != dil[1] * (kw - 1):
        raise ValueError(f"depthwise_conv needs a size-preserving conv (2*padding == dilation*(kernel-1)); "
                         f"got kernel {(kh, kw)}, padding {pad}, dilation {dil}")
    table = active.neighbour_table((kh, kw), dil, pad, source=source)
    if source == "dense":
        x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return depthwise_gather(x, table, weight, bias, backend=backend)
