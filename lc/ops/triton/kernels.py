"""Triton kernels of the compressed region convolution: gathered implicit GEMMs.

Both kernels read their A operand through a neighbour table inside the tile loop, so no im2col
buffer is ever written to global memory:

- `gather_gemm_kernel`: out[n, :] = epilogue(sum_t src[table[n, t], :] @ w[t]) for a packed weight
  w (TAPS * CIN, COUT). A table entry outside [0, M) reads a zero row. Without a table (1x1 convs,
  HAS_TABLE=False) row n reads src[n]. Epilogue: + bias, then residual + scale * conv, then ReLU.
  The grad-input pass of a conv is this same kernel on the transposed table and weight.
- `gather_weight_grad_kernel`: dw[t, co, ci] = sum_n g[n, co] * src[table[n, t], ci] over one slice
  of the rows (the rows are split over programs so a long reduction still fills the GPU; the
  partial sums are added afterwards).

Accumulation is fp32 whatever the input dtype (fp32, fp16, bf16).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["gather_gemm_kernel", "gather_weight_grad_kernel"]


# Row counts vary with every mask (or bucket): not specialised (Triton would compile a variant for
# counts divisible by 16 and for 1), which halves the compiles of a run; strides keep theirs.
@triton.jit(do_not_specialize=["N", "M"])
def gather_gemm_kernel(
    src_ptr, table_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
    N, M, CIN, COUT,
    stride_src, stride_table, stride_res, stride_out,
    scale,
    TAPS: tl.constexpr, HAS_TABLE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
    RELU: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_co = tl.program_id(1)
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_ok = rows < N
    cos = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_ok = cos < COUT
    acc = tl.zeros((BLOCK_N, BLOCK_CO), dtype=tl.float32)
    for tap in range(TAPS):
        if HAS_TABLE:
            src_rows = tl.load(table_ptr + rows * stride_table + tap, mask=row_ok, other=M).to(tl.int64)
        else:
            src_rows = rows
        # entry M (or anything outside the source) is the zero row: masked, never read
        src_ok = row_ok & (src_rows >= 0) & (src_rows < M)
        for c0 in range(0, CIN, BLOCK_CI):
            cis = c0 + tl.arange(0, BLOCK_CI)
            ci_ok = cis < CIN
            a = tl.load(src_ptr + src_rows[:, None] * stride_src + cis[None, :],
                        mask=src_ok[:, None] & ci_ok[None, :], other=0.0)
            b = tl.load(w_ptr + (tap * CIN + cis)[:, None] * COUT + cos[None, :],
                        mask=ci_ok[:, None] & co_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cos, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    out_mask = row_ok[:, None] & co_ok[None, :]
    if HAS_RES:
        residual = tl.load(res_ptr + rows[:, None] * stride_res + cos[None, :], mask=out_mask, other=0.0)
        acc = residual.to(tl.float32) + scale * acc
    else:
        acc = scale * acc
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(out_ptr + rows[:, None] * stride_out + cos[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=out_mask)


@triton.jit(do_not_specialize=["N", "M", "ROWS_PER_SPLIT"])
def gather_weight_grad_kernel(
    src_ptr, table_ptr, g_ptr, dw_ptr,
    N, M, CIN, COUT, ROWS_PER_SPLIT,
    stride_src, stride_table, stride_g,
    TAPS: tl.constexpr, HAS_TABLE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr,
):
    num_ci_tiles = tl.cdiv(CIN, BLOCK_CI)
    pid_tile = tl.program_id(0)
    tap = tl.program_id(1)
    split = tl.program_id(2)
    cos = (pid_tile // num_ci_tiles) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    cis = (pid_tile % num_ci_tiles) * BLOCK_CI + tl.arange(0, BLOCK_CI)
    co_ok = cos < COUT
    ci_ok = cis < CIN
    start = split * ROWS_PER_SPLIT
    end = tl.minimum(start + ROWS_PER_SPLIT, N)
    acc = tl.zeros((BLOCK_CO, BLOCK_CI), dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        rows = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        row_ok = rows < end
        if HAS_TABLE:
            src_rows = tl.load(table_ptr + rows * stride_table + tap, mask=row_ok, other=M).to(tl.int64)
        else:
            src_rows = rows
        src_ok = row_ok & (src_rows >= 0) & (src_rows < M)
        # g loaded transposed, (BLOCK_CO, BLOCK_N): the GEMM reduces over the rows
        g_t = tl.load(g_ptr + rows[None, :] * stride_g + cos[:, None],
                      mask=row_ok[None, :] & co_ok[:, None], other=0.0)
        a = tl.load(src_ptr + src_rows[:, None] * stride_src + cis[None, :],
                    mask=src_ok[:, None] & ci_ok[None, :], other=0.0)
        acc = tl.dot(g_t, a, acc, input_precision=PRECISION)
    out = dw_ptr + ((split * TAPS + tap) * COUT + cos[:, None]) * CIN + cis[None, :]
    tl.store(out, acc, mask=co_ok[:, None] & ci_ok[None, :])
