"""Region convolution as registered PyTorch ops (`torch.library`, namespace `lc`).

    torch.ops.lc.gather_conv(src, table, weight, bias, residual, scale, relu, src_col, table_t, tiles)
    torch.ops.lc.gather_linear(src, weight, bias, residual, scale, relu, src_col, tiles)
    torch.ops.lc.gather_weight_grad(src, table, grad, src_col)
    torch.ops.lc.transpose_table(table, num_src)
    torch.ops.lc.gather_max(src, table)
    torch.ops.lc.gather_conv_into(src, table, weight, bias, relu, src_col, out, out_col, tiles)
    torch.ops.lc.gather_max_into(src, table, out, out_col)

`gather_conv`: out[n] = relu?(residual[n] + scale * (bias + sum_t src[table[n, t], c:c+Cin] @ weight[t]))
with `weight` packed (K, Cin, Cout) (`pack_conv_weight`), `table` (N, K) int32 or int64 and
c = `src_col` (the op reads a column window of `src`, so branches of a merged 1x1 need no copy).
A table entry outside [0, M) reads a zero row: M is the sentinel of every table we build.
`gather_linear` is the same without a table (a compressed 1x1 conv), `weight` (Cin, Cout).

Kernels: CPU, torch (`lc.ops.torch_kernels`: one gather and one GEMM per conv, im2col; a GEMM per
tap for convs whose gathered matrix would exceed `IM2COL_MAX_ELEMENTS`), or the Triton kernels under
the interpreter when the region backend is "triton" and TRITON_INTERPRET=1; CUDA, the Triton kernels
of `lc.ops.triton`.
Fake kernels give shapes for torch.compile; autograd is `register_autograd`, whose backward calls
the same ops: grad src is `gather_conv` on the transposed table (`transpose_table`, or the
`table_t` the caller built once) with the transposed weight; grad weight is `gather_weight_grad`.
The `_into` ops write their result into the column slice out[:, out_col:out_col + Cout] of a
preallocated buffer (a reduction block's branches filling one concat buffer); they mutate `out`,
have no autograd (inference only; training concatenates the functional ops' outputs).
`tiles` ([BLOCK_N, BLOCK_CO, BLOCK_CI], optional): the Triton kernel's tiles as a stage plan
fixed them (`gemm_tiles`); None lets the launcher choose; the torch kernels ignore it.
Tables must be injective per tap (each source row read through tap t by at most one output row,
true of every neighbour table). Nothing in an op syncs with the host or keeps a cache.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from lc.ops.torch_kernels import (
    IM2COL_MAX_ELEMENTS,
    accumulate_dtype,
    safe_table,
    torch_conv,
    torch_linear,
    torch_weight_grad,
)

__all__ = ["IM2COL_MAX_ELEMENTS", "gather_conv", "gather_conv_into", "gather_linear", "gather_max",
           "gather_max_into", "gather_weight_grad", "gemm_tiles", "pack_conv_weight", "set_library_backend",
           "transpose_table", "uses_triton"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# "triton": CPU tensors through Triton's interpreter (tests only); "aot": CPU tensors through the
# Triton launchers under `lc.ops.triton.aot.compile_only` (kernels compiled for a GPU, never run)
_cpu_backend = "torch"


def set_library_backend(name: str) -> None:
    """CPU kernel of the ops: "torch" (default) or "triton" (needs TRITON_INTERPRET=1)."""
    global _cpu_backend
    if name not in ("torch", "triton"):
        raise ValueError(f"library backend must be 'torch' or 'triton', got {name!r}")
    if name == "triton" and not _INTERPRET:
        raise RuntimeError("the 'triton' CPU backend needs TRITON_INTERPRET=1 set before importing lc")
    _cpu_backend = name


def pack_conv_weight(weight: Tensor) -> Tensor:
    """(Cout, Cin, kh, kw) conv weight -> (kh*kw, Cin, Cout) contiguous, the ops' layout."""
    cout, cin, kh, kw = weight.shape
    return weight.permute(2, 3, 1, 0).reshape(kh * kw, cin, cout).contiguous()


def _triton():
    from lc.ops.triton import region_gemm
    return region_gemm


def _cpu_takes_triton() -> bool:
    return (_cpu_backend == "triton" and _INTERPRET) or _cpu_backend == "aot"


def _use_triton(src: Tensor) -> bool:
    return src.is_cuda or _cpu_takes_triton()


def uses_triton(device: torch.device) -> bool:
    """Whether the ops run the Triton kernels on `device` (CUDA, the interpreter backend, or
    compile-only under `lc.ops.triton.aot.compile_only`)."""
    return device.type == "cuda" or _cpu_takes_triton()


def gemm_tiles(num_out: int, cin: int, cout: int, dtype: torch.dtype, device: torch.device) -> list[int]:
    """The Triton kernel's [BLOCK_N, BLOCK_CO, BLOCK_CI] for a (num_out x cin) @ (cin x cout) GEMM."""
    return _triton().choose_tiles(num_out, cin, cout, dtype.itemsize, device)


# --- gather_conv -------------------------------------------------------------------------------
@torch.library.custom_op("lc::gather_conv", mutates_args=())
def gather_conv(src: Tensor, table: Tensor, weight: Tensor, bias: Tensor | None = None,
                residual: Tensor | None = None, scale: float = 1.0, relu: bool = False,
                src_col: int = 0, table_t: Tensor | None = None, tiles: list[int] | None = None) -> Tensor:
    """(M, C) source, (N, K) table, (K, Cin, Cout) weight -> (N, Cout); see the module docstring.

    `table_t` (optional, the backward's transposed table) is not read by the forward.
    """
    if _use_triton(src):
        taps, cin, cout = weight.shape
        flat = weight.reshape(taps * cin, cout)
        return _triton().launch_gather_gemm(src.narrow(1, src_col, cin), table, flat, bias, residual, scale,
                                            relu, num_out=table.shape[0], tiles=tiles)
    return torch_conv(src, table, weight, bias, residual, scale, relu, src_col)


@gather_conv.register_fake
def _(src, table, weight, bias=None, residual=None, scale=1.0, relu=False, src_col=0, table_t=None,
      tiles=None):
    return src.new_empty(table.shape[0], weight.shape[2])


@torch.library.custom_op("lc::gather_conv_into", mutates_args=("out",))
def gather_conv_into(src: Tensor, table: Tensor, weight: Tensor, bias: Tensor | None, relu: bool,
                     src_col: int, out: Tensor, out_col: int, tiles: list[int] | None = None) -> None:
    """`gather_conv` (no residual, scale 1) written into out[:, out_col:out_col + Cout]."""
    taps, cin, cout = weight.shape
    target = out.narrow(1, out_col, cout)
    if _use_triton(src):
        _triton().launch_gather_gemm(src.narrow(1, src_col, cin), table, weight.reshape(taps * cin, cout),
                                     bias, None, 1.0, relu, num_out=table.shape[0], out=target, tiles=tiles)
    else:
        torch_conv(src, table, weight, bias, None, 1.0, relu, src_col, out=target)


@gather_conv_into.register_fake
def _(src, table, weight, bias, relu, src_col, out, out_col, tiles=None):
    return None


# --- gather_linear -----------------------------------------------------------------------------
@torch.library.custom_op("lc::gather_linear", mutates_args=())
def gather_linear(src: Tensor, weight: Tensor, bias: Tensor | None = None,
                  residual: Tensor | None = None, scale: float = 1.0, relu: bool = False,
                  src_col: int = 0, tiles: list[int] | None = None) -> Tensor:
    """(N, C) rows, (Cin, Cout) weight -> (N, Cout) = relu?(residual + scale * (rows @ w + bias))."""
    if _use_triton(src):
        return _triton().launch_gather_gemm(src.narrow(1, src_col, weight.shape[0]), None, weight, bias,
                                            residual, scale, relu, num_out=src.shape[0], tiles=tiles)
    return torch_linear(src, weight, bias, residual, scale, relu, src_col)


@gather_linear.register_fake
def _(src, weight, bias=None, residual=None, scale=1.0, relu=False, src_col=0, tiles=None):
    return src.new_empty(src.shape[0], weight.shape[1])


# --- backward helpers --------------------------------------------------------------------------
@torch.library.custom_op("lc::transpose_table", mutates_args=())
def transpose_table(table: Tensor, num_src: int) -> Tensor:
    """(N, K) table -> (num_src, K): entry [m, t] = the n with table[n, t] == m, else N.

    Entries outside [0, num_src) (the sentinel, padded rows) scatter to a dummy row that is
    dropped. Deterministic for tables injective per tap; no host sync.
    """
    num_out, taps = table.shape
    target = safe_table(table, num_src).long() * taps + torch.arange(taps, device=table.device)
    inverse = torch.full(((num_src + 1) * taps,), num_out, dtype=table.dtype, device=table.device)
    values = torch.arange(num_out, dtype=table.dtype, device=table.device)[:, None].expand(num_out, taps)
    inverse.scatter_(0, target.reshape(-1), values.reshape(-1))
    return inverse.view(num_src + 1, taps)[:num_src].clone()


@transpose_table.register_fake
def _(table, num_src):
    return table.new_empty(num_src, table.shape[1])


@torch.library.custom_op("lc::gather_weight_grad", mutates_args=())
def gather_weight_grad(src: Tensor, table: Tensor, grad: Tensor, src_col: int = 0) -> Tensor:
    """(K, Cin, Cout): dw[t] = src[table[:, t], c:c+Cin].T @ grad, Cin = src.shape[1] - src_col.

    Accumulated in fp32 and returned in src's dtype.
    """
    taps = table.shape[1]
    cin = src.shape[1] - src_col
    if _use_triton(src):
        dw = _triton().launch_weight_grad(src.narrow(1, src_col, cin), table, grad, taps)
        return dw.permute(0, 2, 1).contiguous().to(src.dtype)  # (K, Cout, Cin) -> (K, Cin, Cout)
    return torch_weight_grad(src, table, grad, src_col)


@gather_weight_grad.register_fake
def _(src, table, grad, src_col=0):
    return src.new_empty(table.shape[1], src.shape[1] - src_col, grad.shape[1])


# --- gather_max: a max pool through a table ------------------------------------------------------
def _max_rows(src: Tensor, table: Tensor) -> Tensor:
    """Entries in [0, M] index the padded source (M reads zero); anything else reads -inf (M + 1)."""
    num_src = src.shape[0]
    return torch.where((table >= 0) & (table <= num_src), table, torch.full_like(table, num_src + 1))


@torch.library.custom_op("lc::gather_max", mutates_args=())
def gather_max(src: Tensor, table: Tensor) -> Tensor:
    """(N, C): out[n] = max_t src[table[n, t]]; entry M reads zero, entries outside [0, M] -inf.

    A stride-1 max pool at the active pixels (pool tables mark out-of-bounds taps M + 1). The same
    torch code on every device (on CUDA a few elementwise kernels; it does no arithmetic to save).
    """
    num_src, channels = src.shape
    rows = _max_rows(src, table)
    if num_src > table.numel():  # a large source (the dense stage input): mask, do not copy it
        values = F.embedding(torch.where(rows < num_src, rows, torch.zeros_like(rows)), src)
        values = values.masked_fill_((rows == num_src).unsqueeze(2), 0)
        return values.masked_fill_((rows > num_src).unsqueeze(2), float("-inf")).amax(1)
    padded = torch.cat((src, src.new_zeros(1, channels), src.new_full((1, channels), float("-inf"))))
    return F.embedding(rows, padded).amax(1)


@gather_max.register_fake
def _(src, table):
    return src.new_empty(table.shape[0], src.shape[1])


@torch.library.custom_op("lc::gather_max_into", mutates_args=("out",))
def gather_max_into(src: Tensor, table: Tensor, out: Tensor, out_col: int) -> None:
    """`gather_max` written into out[:, out_col:out_col + C]."""
    out.narrow(1, out_col, src.shape[1]).copy_(gather_max(src, table))


@gather_max_into.register_fake
def _(src, table, out, out_col):
    return None


def _max_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _max_backward(ctx, grad):
    src, table = ctx.saved_tensors
    rows = _max_rows(src, table)
    channels = src.shape[1]
    padded = torch.cat((src, src.new_zeros(1, channels), src.new_full((1, channels), float("-inf"))))
    arg = F.embedding(rows, padded).argmax(1)  # (N, C): the first maximum, as F.max_pool2d
    winner = rows.long().gather(1, arg)
    grad_src = grad.new_zeros(src.shape[0] + 2, channels).scatter_add_(0, winner, grad)
    return grad_src[: src.shape[0]], None


gather_max.register_autograd(_max_backward, setup_context=_max_setup)


# --- autograd ----------------------------------------------------------------------------------
def _grad_epilogue(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None]:
    if ctx.relu:
        grad = grad * (ctx.saved_tensors[-1] > 0)
    grad_residual = grad if ctx.has_residual else None
    return (grad * ctx.scale if ctx.scale != 1.0 else grad), grad_residual


def _full_width(grad_window: Tensor, src_col: int, width: int) -> Tensor:
    if src_col == 0 and grad_window.shape[1] == width:
        return grad_window
    return F.pad(grad_window, (src_col, width - src_col - grad_window.shape[1]))


def _conv_setup(ctx, inputs, output):
    src, table, weight, bias, residual, scale, relu, src_col, table_t, _tiles = inputs
    ctx.scale, ctx.relu, ctx.src_col = scale, relu, src_col
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
    ctx.has_table_t = table_t is not None
    ctx.save_for_backward(src, table, weight, table_t if table_t is not None else table,
                          output if relu else table)


def _conv_backward(ctx, grad):
    src, table, weight, table_t, _ = ctx.saved_tensors
    grad_conv, grad_residual = _grad_epilogue(ctx, grad)
    grad_src = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        inverse = table_t if ctx.has_table_t else transpose_table(table, src.shape[0])
        window = gather_conv(grad_conv, inverse, weight.transpose(1, 2).contiguous())
        grad_src = _full_width(window, ctx.src_col, src.shape[1])
    if ctx.needs_input_grad[2]:
        grad_weight = gather_weight_grad(src.narrow(1, 0, ctx.src_col + weight.shape[1]), table,
                                         grad_conv, ctx.src_col)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad_conv.sum(0)
    return grad_src, None, grad_weight, grad_bias, grad_residual, None, None, None, None, None


def _linear_setup(ctx, inputs, output):
    src, weight, bias, residual, scale, relu, src_col, _tiles = inputs
    ctx.scale, ctx.relu, ctx.src_col = scale, relu, src_col
    ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
    ctx.save_for_backward(src, weight, output if relu else weight)


def _linear_backward(ctx, grad):
    src, weight, _ = ctx.saved_tensors
    grad_conv, grad_residual = _grad_epilogue(ctx, grad)
    grad_src = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_src = _full_width(gather_linear(grad_conv, weight.t().contiguous()), ctx.src_col, src.shape[1])
    if ctx.needs_input_grad[1]:
        window = src.narrow(1, ctx.src_col, weight.shape[0])
        grad_weight = (accumulate_dtype(window.t()) @ accumulate_dtype(grad_conv)).to(weight.dtype)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = grad_conv.sum(0)
    return grad_src, grad_weight, grad_bias, grad_residual, None, None, None, None


gather_conv.register_autograd(_conv_backward, setup_context=_conv_setup)
gather_linear.register_autograd(_linear_backward, setup_context=_linear_setup)
