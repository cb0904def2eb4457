"""Region convolution: a conv computed only at the active pixels of a mask.

Semantics (the one definition everything is tested against):

    region_conv2d(x, w, b, mask) == mask * F.conv2d(x, w, b)        (forward and backward)

Execution paths:
- reference: dense conv, then multiply by the mask (tests only);
- gather: the receptive fields of the active pixels read through a neighbour table, one GEMM per
  kernel tap accumulated in place (an im2col whose blocks stay in cache), scatter back;
- compressed: inside a stage the features stay an (N_active, C) matrix; 1x1 convs are plain GEMMs
  and kxk convs gather through the `ActiveSet`'s cached neighbour tables (`compressed_conv`,
  `dense_input_conv`, `region_max_pool`).
Every kxk path goes through `gather_conv`, which runs the registered op `lc::gather_conv` (its
Triton kernel, `lc.ops.library`) on CUDA tensors when Triton is importable and a gather + GEMM in
torch otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lc.ops.active_set import ActiveSet, as_pair, normalise_mask
from lc.ops.library import pack_conv_weight  # also registers torch.ops.lc.*

__all__ = [
    "ActiveSet",
    "compressed_conv",
    "dense_input_conv",
    "gather_conv",
    "linear_rows",
    "region_conv2d",
    "region_max_pool",
    "set_region_backend",
]

_BACKENDS = ("auto", "torch", "triton")
_backend = "auto"
# region_max_pool gathers windows when they hold fewer elements than this share of the dense map;
# otherwise one dense max_pool2d (a streaming pass, ~5x cheaper per element) and a row gather win.
WINDOW_POOL_MAX_SHARE = 0.25


def set_region_backend(name: str) -> None:
    """Pick the `gather_conv` backend: "auto" (Triton on CUDA when importable), "torch", "triton"."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"region backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_module():
    """lc.ops.triton when it imports (triton installed), else None."""
    try:
        import lc.ops.triton as triton_ops
    except ImportError:
        return None
    return triton_ops


def gather_conv(src: torch.Tensor, table: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """out[i] = sum_t src[table[i, t]] @ weight[:, :, t].T + bias: (M, Cin) x (N, K) -> (N, Cout).

    `table` entries equal to M read a zero row (the source is not padded by the caller); taps are
    the kernel's (i, j) positions in row-major order.
    """
    if src.dim() != 2 or table.dim() != 2 or weight.dim() != 4:
        raise ValueError(f"gather_conv needs src (M, Cin), table (N, K), weight (Cout, Cin, kh, kw); "
                         f"got {tuple(src.shape)}, {tuple(table.shape)}, {tuple(weight.shape)}")
    cout, cin, kh, kw = weight.shape
    if table.shape[1] != kh * kw or src.shape[1] != cin:
        raise ValueError(f"gather_conv: table has {table.shape[1]} taps and src {src.shape[1]} "
                         f"channels, weight {tuple(weight.shape)} needs {kh * kw} and {cin}")
    if src.is_cuda and _backend != "torch" and src.dtype in _TRITON_DTYPES and _triton_module() is not None:
        return _registered_conv(src, table, weight, bias)
    if _backend == "triton" or (_backend == "auto" and src.is_cuda and src.dtype in _TRITON_DTYPES):
        triton_ops = _triton_module()
        # on CPU tensors only Triton's interpreter (TRITON_INTERPRET=1) can run the kernels
        if triton_ops is not None and (src.is_cuda or triton_ops.INTERPRET):
            return triton_ops.gather_conv(src, table, weight, bias)
        if _backend == "triton":
            raise RuntimeError("region backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1) and "
                               "an importable lc.ops.triton (pip install triton); use "
                               "set_region_backend('auto')")
    return _gather_conv_torch(src, table, weight, bias)


def _registered_conv(src: torch.Tensor, table: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """CUDA: the registered op `lc::gather_conv` (Triton kernel; backward on the transposed table,
    no host sync) in the autocast dtype when autocast is on."""
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else src.dtype
    return torch.ops.lc.gather_conv(src.to(dtype), table, pack_conv_weight(weight).to(dtype),
                                    bias.to(dtype) if bias is not None else None, None, 1.0, False, 0, None)


def linear_rows(rows: torch.Tensor, weight_2d: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """rows (N, Cin) @ weight_2d (Cout, Cin).T + bias: the GEMM of every compressed conv.

    A plain BLAS GEMM. (Routing it through oneDNN as a 1x1 conv over an (N, 1) image is 10-15%
    faster on CPU for a repeated N, but every new N builds a new oneDNN primitive, and N changes
    with every image's mask: slower in real use, so we do not.)
    """
    return F.linear(rows, weight_2d, bias)


def _gather_conv_torch(src: torch.Tensor, table: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """One GEMM per kernel tap, accumulated in place: each tap gathers an (N, Cin) block that
    stays in cache, where a full (N, K*Cin) im2col buffer would not (measured 1.0-1.6x faster
    on CPU for IRNet's 3x3, 1x7 and 7x1 convs at 1k-4k rows)."""
    taps = table.shape[1]
    cout, cin = weight.shape[:2]
    src_padded = torch.cat((src, src.new_zeros(1, cin)))
    tap_weights = weight.permute(2, 3, 0, 1).reshape(taps, cout, cin)  # a view for channels-last weights
    tap_rows = table.t().contiguous()
    # F.embedding: the fastest row gather we measured on CPU (faster than index_select)
    out = linear_rows(F.embedding(tap_rows[0], src_padded), tap_weights[0], bias)
    for t in range(1, taps):
        # in place is not autocast: match out's dtype (half under autocast) explicitly
        out = out.addmm_(F.embedding(tap_rows[t], src_padded).to(out.dtype), tap_weights[t].t().to(out.dtype))
    return out


def _is_pointwise(weight: torch.Tensor) -> bool:
    return weight.shape[2] == 1 and weight.shape[3] == 1


def _check_same_size(weight: torch.Tensor, padding, dilation) -> tuple[tuple, tuple]:
    pad, dil = as_pair(padding, "padding"), as_pair(dilation, "dilation")
    kh, kw = weight.shape[2:]
    if 2 * pad[0] != dil[0] * (kh - 1) or 2 * pad[1] != dil[1] * (kw - 1):
        raise ValueError(f"compressed execution needs size-preserving convs (2*padding == "
                         f"dilation*(kernel-1)); got kernel {(kh, kw)}, padding {pad}, dilation {dil}")
    return pad, dil


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B*H*W, C), NHWC order (a view for channels-last input)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def compressed_conv(feat: torch.Tensor, active: ActiveSet, weight: torch.Tensor,
                    bias: torch.Tensor | None, padding=0, dilation=1) -> torch.Tensor:
    """A size-preserving conv on the (N, Cin) features of `active`; inactive neighbours read zero."""
    if _is_pointwise(weight):
        return linear_rows(feat, weight.flatten(1), bias)
    pad, dil = _check_same_size(weight, padding, dilation)
    table = active.neighbour_table(tuple(weight.shape[2:]), dil, pad, source="active")
    return gather_conv(feat, table, weight, bias)


def _input_rows(x: torch.Tensor, active: ActiveSet, source: ActiveSet | None) -> torch.Tensor:
    if source is None:
        return active.gather(x)
    return x.index_select(0, active.rows_in(source))


def dense_input_conv(x_dense: torch.Tensor, active: ActiveSet, weight: torch.Tensor,
                     bias: torch.Tensor | None, padding=0, dilation=1,
                     source: ActiveSet | None = None) -> torch.Tensor:
    """A stage's first conv: (N, Cout) at the active pixels, reading every neighbour of the input.

    The input is dense (B, C, H, W), or with `source` the (M, C) matrix of that set's pixels
    (zero elsewhere), e.g. stage 2's compressed output read by stage 3 without densifying it.
    """
    if _is_pointwise(weight):
        return linear_rows(_input_rows(x_dense, active, source), weight.flatten(1), bias)
    pad, dil = _check_same_size(weight, padding, dilation)
    kernel = tuple(weight.shape[2:])
    if source is None:
        table = active.neighbour_table(kernel, dil, pad, source="dense")
        return gather_conv(_as_rows(x_dense), table, weight, bias)
    table = active.neighbour_table(kernel, dil, pad, source=source)
    return gather_conv(x_dense, table, weight, bias)


def region_max_pool(x_dense: torch.Tensor, active: ActiveSet, kernel_size: int | Sequence[int],
                    padding: int | Sequence[int] = 0, source: ActiveSet | None = None) -> torch.Tensor:
    """Stride-1 max pool at the active pixels -> (N, C), with torch's -inf padding at the border.

    With `source`, `x_dense` is that set's (M, C) matrix and its inactive pixels read zero (they
    are zeros of the dense tensor it stands for). Gradients go to the first maximum of a window,
    as in `F.max_pool2d`. A pool does no arithmetic worth saving: unless the windows of the active
    pixels are small against the map (`WINDOW_POOL_MAX_SHARE`), it pools densely and gathers.
    """
    (kh, kw), (ph, pw) = as_pair(kernel_size, "kernel_size"), as_pair(padding, "padding")
    if 2 * ph != kh - 1 or 2 * pw != kw - 1:
        raise ValueError(f"region_max_pool needs a size-preserving pool (2*padding == kernel-1), got "
                         f"kernel {(kh, kw)}, padding {(ph, pw)}")
    if active.num_active * kh * kw >= WINDOW_POOL_MAX_SHARE * active.num_pixels:
        dense = x_dense if source is None else source.scatter(x_dense)
        return active.gather(F.max_pool2d(dense, (kh, kw), 1, (ph, pw)))
    rows = x_dense if source is not None else _as_rows(x_dense)
    table = active.pool_table(kernel_size, padding, source=source if source is not None else "dense")
    channels = rows.shape[1]
    padded = torch.cat((rows, rows.new_zeros(1, channels), rows.new_full((1, channels), float("-inf"))))
    return F.embedding(table, padded).max(dim=1).values


def region_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor,
                  stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                  dilation: int | Sequence[int] = 1, impl: str = "auto") -> torch.Tensor:
    """`mask * F.conv2d(x, weight, bias, stride, padding, dilation)`, computed at masked pixels only.

    mask: (B, H_out, W_out) or (B, 1, H_out, W_out), bool or 0/1, broadcast over channels.
    impl: "reference" (dense then mask), "gather" (gathered receptive fields of the active pixels,
    GEMMs, scatter),
    "auto" (a dense conv when every pixel is active, which is the same result; gather otherwise).
    """
    if as_pair(stride, "stride") != (1, 1):
        raise ValueError(f"region_conv2d supports stride 1 only (got {stride}); "
                         "run strided layers densely before the region starts")
    if impl not in ("auto", "reference", "gather"):
        raise ValueError(f"impl must be 'auto', 'reference' or 'gather', got {impl!r}")
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"region_conv2d needs x (B, C, H, W) and weight (Cout, C, kh, kw) "
                         f"(groups=1); got {tuple(x.shape)} and {tuple(weight.shape)}")
    pad, dil = as_pair(padding, "padding"), as_pair(dilation, "dilation")
    kh, kw = weight.shape[2:]
    out_h = x.shape[2] + 2 * pad[0] - dil[0] * (kh - 1)
    out_w = x.shape[3] + 2 * pad[1] - dil[1] * (kw - 1)
    mask = normalise_mask(mask.detach())
    if tuple(mask.shape) != (x.shape[0], out_h, out_w):
        raise ValueError(f"mask {tuple(mask.shape)} does not match the conv output "
                         f"(B, H_out, W_out) = {(x.shape[0], out_h, out_w)}")
    if impl == "reference" or (impl == "auto" and bool(mask.all())):
        out = F.conv2d(x, weight, bias, 1, pad, dil)
        return out if impl == "auto" else out * mask.unsqueeze(1).to(out.dtype)
    active = ActiveSet(mask)
    table = active.neighbour_table((kh, kw), dil, pad, source="dense", input_size=x.shape[2:])
    return active.scatter(gather_conv(_as_rows(x), table, weight, bias))
