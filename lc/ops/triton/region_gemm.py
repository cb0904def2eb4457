"""The compressed region conv on the GPU: launchers and autograd around the Triton kernels.

`gather_conv(src, table, weight, bias)` has exactly the semantics of
`lc.ops.region_conv.gather_conv` (row n = bias + sum_t src[table[n, t]] @ weight[:, :, t].T, an
entry equal to M reads zero), plus fused epilogue options for the IRNet blocks:

    out = relu?(residual + scale * (conv + bias))        (residual defaults to zero)

`gather_linear(rows, weight_2d, bias)` is the same without a table (a 1x1 conv on the (N, C)
matrix, e.g. a residual block's closing conv with its scale, residual add and ReLU fused).

Backward:
- grad input: a conv table is injective per tap (each source row is read through tap t by at most
  one output row), so it is inverted into a transposed table (M, K) and grad_src is the forward
  kernel on (grad_out, transposed table, transposed weight): a deterministic gathered GEMM, no
  atomics. The inverse is built once per table tensor and cached. A table that is not injective
  (possible through the public API, never from an `ActiveSet`) falls back to a torch scatter-add;
- grad weight: a gathered GEMM per tap, reducing over the rows in parallel slices;
- grad bias and the epilogue (ReLU mask, residual, scale): elementwise torch ops and one reduction.

CUDA tensors are required, except under the Triton interpreter (TRITON_INTERPRET=1 set before
triton is imported), which runs the same kernels on CPU tensors for the tests.
"""

from __future__ import annotations

import os
import weakref

import torch
import triton

from lc.ops.triton.kernels import gather_gemm_kernel, gather_weight_grad_kernel

__all__ = ["INTERPRET", "choose_tiles", "gather_conv", "gather_linear", "launch_gather_gemm",
           "launch_weight_grad", "transposed_table"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# rows each program of the weight-gradient kernel reduces over (more rows: more split programs)
WEIGHT_GRAD_ROWS_PER_SPLIT = 4096


# --- launch configuration ---------------------------------------------------------------------
def _tile(channels: int, largest: int) -> int:
    """A power-of-two tile edge between 16 (tl.dot's minimum) and `largest`."""
    return max(16, min(largest, triton.next_power_of_2(max(1, channels))))


def _precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's matmul TF32 switch (off by default): results match F.conv2d in fp32
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


_sm_count: dict[torch.device, int] = {}


def _block_n(num_out: int, co_tiles: int, device: torch.device) -> int:
    """Rows per program: 128 for long matrices; 32 when 64-row tiles would leave most SMs idle
    (small active sets at batch 1: the row count is the bucket, so this is fixed per bucket)."""
    if num_out >= 4096 and not INTERPRET:
        return 128
    if device not in _sm_count:
        _sm_count[device] = (torch.cuda.get_device_properties(device).multi_processor_count
                             if device.type == "cuda" else 132)
    return 32 if triton.cdiv(num_out, 64) * co_tiles < 2 * _sm_count[device] else 64


def choose_tiles(num_out: int, cin: int, cout: int, element_size: int, device: torch.device) -> list[int]:
    """[BLOCK_N, BLOCK_CO, BLOCK_CI] of the gather-GEMM kernel for this shape (a stage plan records
    them once per bucket, so its launches pick nothing per call)."""
    block_co = _tile(cout, 128 if element_size == 2 else 64)
    return [_block_n(num_out, triton.cdiv(cout, block_co), device), block_co,
            _tile(cin, 64 if element_size == 2 else 32)]


def _warps(block_a: int, block_b: int) -> int:
    return 8 if block_a * block_b >= 128 * 128 else 4


# --- launchers --------------------------------------------------------------------------------
def _unit(t: torch.Tensor | None) -> torch.Tensor | None:
    """`t` when its last dim is unit-stride (the kernels take one row stride and read channels
    contiguously), else a contiguous copy: a batch-1 NCHW map read as (H*W, C) rows, an expanded
    gradient. Metadata only for the planned stages' tensors, which already qualify."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _gather_gemm(src: torch.Tensor, table: torch.Tensor | None, w_packed: torch.Tensor,
                 bias: torch.Tensor | None, residual: torch.Tensor | None, scale: float,
                 relu: bool, num_out: int, out: torch.Tensor | None = None,
                 tiles: list[int] | None = None) -> torch.Tensor:
    """(num_out, COUT) = epilogue(sum_t src[table[:, t]] @ w_packed[t*CIN:(t+1)*CIN]).

    out: where to write it (a column slice of a wider buffer: rows strided, channels contiguous).
    tiles: [BLOCK_N, BLOCK_CO, BLOCK_CI] fixed by the caller (a stage plan), else `choose_tiles`."""
    src, table, bias, residual = _unit(src), _unit(table), _unit(bias), _unit(residual)
    w_packed = w_packed.contiguous()
    taps = 1 if table is None else table.shape[1]
    cin = src.shape[1]
    cout = w_packed.shape[1]
    if out is None:
        out = src.new_empty(num_out, cout)
    if num_out == 0 or cout == 0:
        return out
    block_n, block_co, block_ci = tiles or choose_tiles(num_out, cin, cout, src.element_size(), src.device)
    grid = (triton.cdiv(num_out, block_n), triton.cdiv(cout, block_co))
    gather_gemm_kernel[grid](
        src, table if table is not None else src, w_packed,
        bias if bias is not None else w_packed, residual if residual is not None else out, out,
        num_out, src.shape[0], cin, cout,
        src.stride(0), table.stride(0) if table is not None else 0,
        residual.stride(0) if residual is not None else 0, out.stride(0),
        float(scale),
        TAPS=taps, HAS_TABLE=table is not None, HAS_BIAS=bias is not None,
        HAS_RES=residual is not None, RELU=relu, PRECISION=_precision(src.dtype),
        BLOCK_N=block_n, BLOCK_CO=block_co, BLOCK_CI=block_ci,
        num_warps=_warps(block_n, block_co), num_stages=3,
    )
    return out


def _weight_grad(src: torch.Tensor, table: torch.Tensor | None, grad: torch.Tensor,
                 taps: int) -> torch.Tensor:
    """(taps, COUT, CIN) fp32: sum_n grad[n, co] * src[table[n, t], ci]."""
    src, table, grad = _unit(src), _unit(table), _unit(grad)
    num_rows, cout = grad.shape
    cin = src.shape[1]
    if num_rows == 0:
        return grad.new_zeros(taps, cout, cin, dtype=torch.float32)
    splits = triton.cdiv(num_rows, WEIGHT_GRAD_ROWS_PER_SPLIT)
    rows_per_split = triton.cdiv(num_rows, splits)
    block_co = _tile(cout, 64)
    block_ci = _tile(cin, 64)
    partial = grad.new_empty(splits, taps, cout, cin, dtype=torch.float32)
    grid = (triton.cdiv(cout, block_co) * triton.cdiv(cin, block_ci), taps, splits)
    gather_weight_grad_kernel[grid](
        src, table if table is not None else src, grad, partial,
        num_rows, src.shape[0], cin, cout, rows_per_split,
        src.stride(0), table.stride(0) if table is not None else 0, grad.stride(0),
        TAPS=taps, HAS_TABLE=table is not None, PRECISION=_precision(src.dtype),
        BLOCK_N=32 if INTERPRET else 64, BLOCK_CO=block_co, BLOCK_CI=block_ci,
        num_warps=_warps(block_co, block_ci), num_stages=3,
    )
    return partial.sum(0) if splits > 1 else partial[0]


# the launchers of the registered ops (lc.ops.library): no checks, no casts, no caches; rows made
# unit-stride only where they are not
launch_gather_gemm = _gather_gemm
launch_weight_grad = _weight_grad


# --- transposed neighbour tables --------------------------------------------------------------
_inverse_cache: dict[int, tuple] = {}


def transposed_table(table: torch.Tensor, num_src: int) -> torch.Tensor | None:
    """(num_src, K) table: entry [m, t] is the row n with table[n, t] == m, or N when none.

    None when some source row is read twice through one tap (not invertible). Cached per table
    tensor (until it is freed or modified in place), so every block of a stage inverts its
    shared table once.
    """
    key = id(table)
    hit = _inverse_cache.get(key)
    if hit is not None and hit[0] == (table._version, tuple(table.shape), num_src, table.device):
        return hit[1]
    num_out, taps = table.shape
    tap_index = torch.arange(taps, device=table.device).expand(num_out, taps)
    valid = (table >= 0) & (table < num_src)
    slots = (table * taps + tap_index)[valid]
    out_rows = torch.arange(num_out, device=table.device).unsqueeze(1).expand(num_out, taps)[valid]
    inverse = None
    if slots.numel() == 0 or int(torch.bincount(slots, minlength=num_src * taps).max()) <= 1:
        inverse = torch.full((num_src * taps,), num_out, dtype=torch.int64, device=table.device)
        inverse[slots] = out_rows
        inverse = inverse.view(num_src, taps)
    if hit is None:
        weakref.finalize(table, _inverse_cache.pop, key, None)
    _inverse_cache[key] = ((table._version, tuple(table.shape), num_src, table.device), inverse)
    return inverse


def _grad_src_fallback(grad: torch.Tensor, table: torch.Tensor, weight: torch.Tensor,
                       num_src: int) -> torch.Tensor:
    """grad_src by a scatter-add in torch, for tables that cannot be transposed."""
    cout, cin = weight.shape[:2]
    taps = table.shape[1]
    cols = grad.float() @ weight.permute(0, 2, 3, 1).reshape(cout, taps * cin).float()
    grad_src = grad.new_zeros(num_src + 1, cin, dtype=torch.float32)
    index = table.clamp(0, num_src).reshape(-1)
    grad_src.index_add_(0, index, cols.view(-1, cin))
    return grad_src[:num_src].to(grad.dtype)


# --- autograd -----------------------------------------------------------------------------------
def _pack(weight: torch.Tensor) -> torch.Tensor:
    """(COUT, CIN, kh, kw) -> (kh*kw*CIN, COUT): tap-major rows, the kernel's B operand."""
    cout, cin = weight.shape[:2]
    return weight.permute(2, 3, 1, 0).reshape(-1, cout).contiguous()


def _pack_transposed(weight: torch.Tensor) -> torch.Tensor:
    """(COUT, CIN, kh, kw) -> (kh*kw*COUT, CIN): the B operand of the grad-input pass."""
    cin = weight.shape[1]
    return weight.permute(2, 3, 0, 1).reshape(-1, cin).contiguous()


class _GatherConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, table, weight, bias, residual, scale, relu):
        out = _gather_gemm(src, table, _pack(weight), bias, residual, scale, relu,
                           num_out=table.shape[0] if table is not None else src.shape[0])
        ctx.scale, ctx.relu = scale, relu
        ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
        ctx.save_for_backward(src, table, weight, out if relu else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        src, table, weight, out = ctx.saved_tensors
        grad = grad_out.contiguous()
        if ctx.relu:
            grad = grad * (out > 0)
        grad_residual = grad if ctx.has_residual and ctx.needs_input_grad[4] else None
        grad_conv = grad * ctx.scale if ctx.scale != 1.0 else grad
        grad_src = grad_weight = grad_bias = None
        taps = weight.shape[2] * weight.shape[3]
        if ctx.needs_input_grad[0]:
            if table is None:
                grad_src = _gather_gemm(grad_conv, None, _pack_transposed(weight), None, None, 1.0,
                                        False, num_out=src.shape[0])
            else:
                inverse = transposed_table(table, src.shape[0])
                if inverse is None:
                    grad_src = _grad_src_fallback(grad_conv, table, weight, src.shape[0])
                else:
                    grad_src = _gather_gemm(grad_conv, inverse, _pack_transposed(weight), None, None,
                                            1.0, False, num_out=src.shape[0])
        if ctx.needs_input_grad[2]:
            dw = _weight_grad(src, table, grad_conv, taps)  # (taps, COUT, CIN)
            grad_weight = dw.permute(1, 2, 0).reshape(weight.shape).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad_conv.sum(0, dtype=torch.float32).to(grad_conv.dtype)
        return grad_src, None, grad_weight, grad_bias, grad_residual, None, None


# --- public API ---------------------------------------------------------------------------------
def _compute_dtype(src: torch.Tensor) -> torch.dtype:
    if src.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return src.dtype


def _check(src: torch.Tensor, table: torch.Tensor | None, weight: torch.Tensor,
           bias: torch.Tensor | None, residual: torch.Tensor | None) -> None:
    if not (src.is_cuda or INTERPRET):
        raise ValueError("lc.ops.triton needs CUDA tensors (or TRITON_INTERPRET=1 set before importing "
                         "triton, for the CPU interpreter); on CPU use lc.ops.region_conv.gather_conv")
    if src.dim() != 2 or weight.dim() != 4:
        raise ValueError(f"need src (M, Cin) and weight (Cout, Cin, kh, kw); got {tuple(src.shape)}, "
                         f"{tuple(weight.shape)}")
    cout, cin, kh, kw = weight.shape
    if src.shape[1] != cin:
        raise ValueError(f"src has {src.shape[1]} channels, weight {tuple(weight.shape)} needs {cin}")
    if table is not None:
        if table.dim() != 2 or table.shape[1] != kh * kw:
            raise ValueError(f"table must be (N, {kh * kw}) for a {kh}x{kw} kernel, got "
                             f"{tuple(table.shape)}")
        if table.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"table must be an integer tensor, got {table.dtype}")
    if bias is not None and bias.shape != (cout,):
        raise ValueError(f"bias must be ({cout},), got {tuple(bias.shape)}")
    num_out = table.shape[0] if table is not None else src.shape[0]
    if residual is not None and residual.shape != (num_out, cout):
        raise ValueError(f"residual must be ({num_out}, {cout}), got {tuple(residual.shape)}")
    devices = {t.device for t in (src, table, weight, bias, residual) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")


def _run(src, table, weight, bias, residual, scale, relu) -> torch.Tensor:
    _check(src, table, weight, bias, residual)
    dtype = _compute_dtype(src)
    if dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"lc.ops.triton supports {_SUPPORTED_DTYPES}, got {dtype}")
    # the kernels index rows with a stride and channels contiguously
    src = src.to(dtype).contiguous()
    weight = weight.to(dtype)
    bias = bias.to(dtype).contiguous() if bias is not None else None
    residual = residual.to(dtype).contiguous() if residual is not None else None
    table = table.to(torch.int64).contiguous() if table is not None else None
    return _GatherConv.apply(src, table, weight, bias, residual, float(scale), bool(relu))


def gather_conv(src: torch.Tensor, table: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None = None, *, residual: torch.Tensor | None = None,
                scale: float = 1.0, relu: bool = False) -> torch.Tensor:
    """(M, Cin) x table (N, kh*kw) -> (N, Cout) = relu?(residual + scale * (conv + bias)).

    Row n of the conv is sum_t src[table[n, t]] @ weight[:, :, t].T; an entry equal to M reads zero
    (the source is not padded). Differentiable in src, weight, bias and residual.
    """
    return _run(src, table, weight, bias, residual, scale, relu)


def gather_linear(rows: torch.Tensor, weight_2d: torch.Tensor, bias: torch.Tensor | None = None, *,
                  residual: torch.Tensor | None = None, scale: float = 1.0,
                  relu: bool = False) -> torch.Tensor:
    """(N, Cin) @ weight_2d (Cout, Cin).T with the same fused epilogue: a compressed 1x1 conv."""
    if weight_2d.dim() != 2:
        raise ValueError(f"weight_2d must be (Cout, Cin), got {tuple(weight_2d.shape)}")
    return _run(rows, None, weight_2d[:, :, None, None], bias, residual, scale, relu)
