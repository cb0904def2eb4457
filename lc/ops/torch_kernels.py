"""The torch implementations of the region ops (`lc.ops.library`): their CPU kernels, and the
table helpers the ops share on every device.

`torch_conv` is one gather and one GEMM per conv (im2col) below `IM2COL_MAX_ELEMENTS` gathered
values, one GEMM per tap above; every GEMM takes its epilogue (residual as the GEMM's C input,
bias and ReLU in one pass after it). A table entry outside [0, M) reads a zero row (`safe_table`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IM2COL_MAX_ELEMENTS", "accumulate_dtype", "safe_table", "torch_conv", "torch_linear",
           "torch_weight_grad"]


def _gemm(rows: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor | None, scale: float,
          relu: bool, out: Tensor | None = None) -> Tensor:
    """relu?(residual + scale * (rows @ weight + bias)) in one GEMM and at most one pass after it:
    the residual (or the bias, without a residual) is the GEMM's C input, a bias after a residual
    is added together with the ReLU (`_finish`). `out`: write there (no residual)."""
    if residual is not None:  # (a residual in another dtype is rounded to the GEMM's, as on Triton)
        gemm = torch.addmm(residual.to(rows.dtype), rows, weight, alpha=scale)
        return _finish(gemm, bias, scale, relu)
    if bias is not None:
        gemm = (torch.addmm(bias, rows, weight, beta=scale, alpha=scale) if out is None else
                torch.addmm(bias, rows, weight, beta=scale, alpha=scale, out=out))
    else:
        gemm = torch.mm(rows, weight) if out is None else torch.mm(rows, weight, out=out)
        if scale != 1.0:
            gemm = gemm.mul_(scale)
    return gemm.relu_() if relu else gemm


def _finish(acc: Tensor, bias: Tensor | None, scale: float, relu: bool) -> Tensor:
    """In place: acc + scale * bias, then ReLU, in one pass."""
    if bias is None:
        return acc.relu_() if relu else acc
    if relu and acc.dtype in (torch.float32, torch.float64):  # aten's fused kernel has no half types
        return torch.ops.aten._add_relu_.Tensor(acc, bias, alpha=scale)
    acc = acc.add_(bias, alpha=scale)
    return acc.relu_() if relu else acc


def _padded(src: Tensor, src_col: int, cin: int) -> Tensor:
    """The source window with the zero row appended at index M."""
    return torch.cat((src.narrow(1, src_col, cin), src.new_zeros(1, cin)))


def safe_table(table: Tensor, num_src: int) -> Tensor:
    """Every entry outside [0, M) becomes M (the zero row): -1 and M + 1 both land on M."""
    return torch.remainder(table.clamp(-1, num_src), num_src + 1)


# One gather + one GEMM per conv (im2col) below this many gathered elements (16 MiB in fp32); above
# it the conv accumulates one GEMM per tap instead of materialising the (N, K * Cin) matrix. At
# small active counts the per-tap path paid for its 2K small ops per conv and its short GEMMs
# (2-thread CPU, paper stage 2 at 256 x 256, interleaved A/B: 15% faster at 3% and 9% active, 3%
# at 100%; stage 3 5-7% and even).
IM2COL_MAX_ELEMENTS = 1 << 22


def _gather_rows(src: Tensor, table: Tensor, src_col: int, cin: int) -> Tensor:
    """(T, Cin) rows src[table, c:c+Cin] of a flat (T,) table, zero where an entry is outside [0, M).

    A source larger than the gathered rows (a stage's dense input at a small active fraction) is
    not copied to append the zero row: its invalid entries are masked after the gather."""
    num_src = src.shape[0]
    if num_src > table.numel():
        valid = (table >= 0) & (table < num_src)
        rows = src.narrow(1, src_col, cin).index_select(0, torch.where(valid, table, torch.zeros_like(table)))
        return rows.masked_fill_(~valid.unsqueeze(1), 0)  # masked_fill, not a multiply: 0 * inf is NaN
    return _padded(src, src_col, cin).index_select(0, safe_table(table, num_src))


def _tap_reader(src: Tensor, table: Tensor, src_col: int, cin: int):
    """tap t -> the (N, Cin) rows it reads (the per-tap path of large convs)."""
    num_src = src.shape[0]
    if num_src > table.numel():
        valid = (table >= 0) & (table < num_src)
        rows = torch.where(valid, table, torch.zeros_like(table)).t().contiguous()
        drop = (~valid).t().unsqueeze(2)
        window = src.narrow(1, src_col, cin)
        return lambda t: F.embedding(rows[t], window).masked_fill_(drop[t], 0)
    padded = _padded(src, src_col, cin)
    rows = safe_table(table, num_src).t().contiguous()
    return lambda t: F.embedding(rows[t], padded)


def torch_conv(src, table, weight, bias, residual, scale, relu, src_col, out=None):
    """`lc::gather_conv` in torch; out: a (N, Cout) view to write in (no residual), else a new tensor."""
    taps, cin, cout = weight.shape
    num_out = table.shape[0]
    if num_out * taps * cin <= IM2COL_MAX_ELEMENTS:  # shapes only: the same branch on every call
        cols = _gather_rows(src, table.reshape(-1), src_col, cin).view(num_out, taps * cin)
        return _gemm(cols, weight.reshape(taps * cin, cout), bias, residual, scale, relu, out)
    read = _tap_reader(src, table, src_col, cin)
    acc = _gemm(read(0), weight[0], None, residual, scale, False, out)
    for t in range(1, taps):
        acc.addmm_(read(t), weight[t], alpha=scale)
    return _finish(acc, bias, scale, relu)


def torch_linear(src, weight, bias, residual, scale, relu, src_col):
    """`lc::gather_linear` in torch."""
    return _gemm(src.narrow(1, src_col, weight.shape[0]), weight, bias, residual, scale, relu)


def accumulate_dtype(t: Tensor) -> Tensor:
    """fp16/bf16 accumulate in fp32; fp32 and fp64 keep their own precision."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def torch_weight_grad(src: Tensor, table: Tensor, grad: Tensor, src_col: int) -> Tensor:
    """`lc::gather_weight_grad` in torch: (K, Cin, Cout), accumulated in fp32 for half types."""
    cin = src.shape[1] - src_col
    src_p = accumulate_dtype(_padded(src, src_col, cin))
    rows = safe_table(table, src.shape[0]).t()
    grad_acc = accumulate_dtype(grad)
    taps = [F.embedding(rows[t], src_p).t() @ grad_acc for t in range(table.shape[1])]
    return torch.stack(taps).to(src.dtype)
