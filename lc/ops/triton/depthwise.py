"""Triton kernel of the depthwise region convolution (`lc.ops.depthwise.depthwise_gather`).

One program per (block of rows, block of channels): for every tap it loads the table's row index,
reads the source row's channels (a row index equal to M reads zero), multiplies by the tap's
per-channel weight and accumulates in fp32; bias added at the end. Backward: autograd through
the torch reference's formula (grads of src by a scatter-add over the table, of the weights by a
gathered reduction), computed with torch ops so that it needs no second kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["depthwise_gather"]


@triton.jit(do_not_specialize=["n_rows", "m_rows"])  # row counts vary with every mask
def _depthwise_kernel(src_ptr, table_ptr, w_ptr, bias_ptr, out_ptr, n_rows, m_rows, channels,
                      taps: tl.constexpr, has_bias: tl.constexpr, block_n: tl.constexpr,
                      block_c: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_n * block_n + tl.arange(0, block_n)
    chans = pid_c * block_c + tl.arange(0, block_c)
    row_ok = rows < n_rows
    chan_ok = chans < channels
    acc = tl.zeros((block_n, block_c), dtype=tl.float32)
    for t in range(taps):
        idx = tl.load(table_ptr + rows * taps + t, mask=row_ok, other=m_rows)
        read = ((idx >= 0) & (idx < m_rows))[:, None] & chan_ok[None, :] & row_ok[:, None]  # else zero
        vals = tl.load(src_ptr + idx[:, None] * channels + chans[None, :], mask=read, other=0.0)
        w = tl.load(w_ptr + chans * taps + t, mask=chan_ok, other=0.0)
        acc += vals.to(tl.float32) * w.to(tl.float32)[None, :]
    if has_bias:
        acc += tl.load(bias_ptr + chans, mask=chan_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * channels + chans[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & chan_ok[None, :])


def _forward(src: torch.Tensor, table: torch.Tensor, taps: torch.Tensor,
             bias: torch.Tensor | None) -> torch.Tensor:
    src, table, taps = src.contiguous(), table.contiguous(), taps.contiguous()
    n_rows, n_taps = table.shape
    channels = src.shape[1]
    out = src.new_empty(n_rows, channels)
    if n_rows == 0:
        return out
    block_n, block_c = 32, min(64, triton.next_power_of_2(channels))
    grid = (triton.cdiv(n_rows, block_n), triton.cdiv(channels, block_c))
    _depthwise_kernel[grid](src, table, taps, bias if bias is not None else taps, out, n_rows,
                            src.shape[0], channels, taps=n_taps, has_bias=bias is not None,
                            block_n=block_n, block_c=block_c)
    return out


class _DepthwiseGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, table, taps, bias):
        ctx.save_for_backward(src, table, taps)
        ctx.has_bias = bias is not None
        return _forward(src, table, taps, bias)

    @staticmethod
    def backward(ctx, grad_out):
        src, table, taps = ctx.saved_tensors
        num_src = src.shape[0]
        table = torch.where((table >= 0) & (table < num_src), table, num_src)  # as the forward: zero row
        padded = torch.cat((src, src.new_zeros(1, src.shape[1])))
        grad_src = grad_taps = grad_bias = None
        if ctx.needs_input_grad[0]:
            # accumulated in fp32: taps may be fp32 beside an fp16/bf16 src (autocast), and the
            # index_add_ sums up to T contributions per row
            contrib = grad_out.float()[:, None, :] * taps.float().t()[None]  # (N, T, C)
            grad_padded = padded.new_zeros(padded.shape, dtype=torch.float32).index_add_(
                0, table.reshape(-1), contrib.reshape(-1, src.shape[1]))
            grad_src = grad_padded[:-1].to(src.dtype)
        if ctx.needs_input_grad[2]:
            grad_taps = torch.einsum("ntc,nc->ct", padded[table].float(), grad_out.float()).to(taps.dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad_out.sum(0)
        return grad_src, None, grad_taps, grad_bias


def depthwise_gather(src: torch.Tensor, table: torch.Tensor, taps: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """out[i, c] = sum_t src[table[i, t], c] * taps[c, t] + bias[c] (an entry outside [0, M) reads zero)."""
    return _DepthwiseGather.apply(src, table, taps, bias)
