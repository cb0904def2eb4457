"""The registered region-conv ops (torch.ops.lc.*): opcheck, the conv contract, gradients, Triton.

The Triton kernels run on CPU tensors only in Triton's interpreter (TRITON_INTERPRET=1 before
triton is imported): this file runs itself as a subprocess with that variable set. The `gpu`
tests run opcheck on CUDA and are skipped without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import lc.ops.library  # noqa: F401  (registers torch.ops.lc.*)
import lc.ops.torch_kernels
from lc.ops.active_set import ActiveSet
from lc.ops.library import pack_conv_weight


def _case(device="cpu", dtype=torch.float64, kernel=(3, 3), dilation=(1, 1), cin=5, cout=4, seed=0,
          src_col=0, int32=True):
    """A compressed conv: (N, C) features of an ActiveSet, its neighbour table, a packed weight."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(2, 6, 5, generator=gen) < 0.6
    active = ActiveSet(mask)
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
    table = active.neighbour_table(kernel, dilation, padding, source="active")
    table = table.to(torch.int32 if int32 else torch.int64).to(device)
    src = torch.randn(active.num_active, src_col + cin, generator=gen).to(device, dtype)
    fan_in = cin * kernel[0] * kernel[1]
    weight = torch.randn(cout, cin, *kernel, generator=gen).to(device, dtype) / fan_in ** 0.5
    bias = torch.randn(cout, generator=gen).to(device, dtype)
    residual = torch.randn(active.num_active, cout, generator=gen).to(device, dtype)
    return dict(active=active, mask=mask, table=table, src=src, weight=weight, bias=bias,
                residual=residual, padding=padding, dilation=dilation, src_col=src_col)


def _reference(c, scale=1.0, relu=False, with_residual=False) -> torch.Tensor:
    """mask * conv2d on the scattered features, read back at the active pixels."""
    active = c["active"]
    dense = active.scatter(c["src"][:, c["src_col"]:].to(torch.float64).cpu())
    conv = active.gather(F.conv2d(dense, c["weight"].double().cpu(), c["bias"].double().cpu(), 1,
                                  c["padding"], c["dilation"]))
    out = scale * conv
    if with_residual:
        out = out + c["residual"].double().cpu()
    return out.relu() if relu else out


def _conv_args(c, scale=0.5, relu=True, grad=False):
    args = [c["src"], c["table"], pack_conv_weight(c["weight"]), c["bias"], c["residual"], scale, relu,
            c["src_col"], None]
    if grad:
        for i in (0, 2, 3, 4):
            args[i] = args[i].detach().requires_grad_()
    return args


# --- contract -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,dilation", [((3, 3), (1, 1)), ((1, 7), (2, 2)), ((3, 1), (1, 1))])
def test_gather_conv_is_the_masked_conv(kernel, dilation) -> None:
    c = _case(kernel=kernel, dilation=dilation, src_col=2)
    got = torch.ops.lc.gather_conv(*_conv_args(c, scale=0.3, relu=True))
    want = _reference(c, scale=0.3, relu=True, with_residual=True)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_cpu_kernels_run_half_types(dtype: torch.dtype) -> None:
    """The epilogue (residual, bias, ReLU) on the CPU in fp16/bf16, as CPU autocast would run it."""
    c = _case(cin=16, cout=12, src_col=1)
    half = {**c, **{k: c[k].to(dtype) for k in ("src", "weight", "bias", "residual")}}
    got = torch.ops.lc.gather_conv(*_conv_args(half, scale=0.5, relu=True))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), _reference(half, scale=0.5, relu=True, with_residual=True),
                               rtol=3e-2, atol=3e-2)
    w = half["weight"][:, :, 1, 1].t().contiguous()
    lin = torch.ops.lc.gather_linear(half["src"], w, half["bias"], half["residual"], 0.5, True, 1)
    conv = half["src"][:, 1:].double() @ w.double() + half["bias"].double()
    want = half["residual"].double() + 0.5 * conv
    torch.testing.assert_close(lin.double(), want.relu(), rtol=3e-2, atol=3e-2)


def test_a_large_source_reads_the_same_rows() -> None:
    """Rows the table never reads (a stage's dense input at a small fraction) change nothing."""
    c = _case(src_col=1)
    args = _conv_args(c)
    extra = torch.randn(500, c["src"].shape[1], dtype=c["src"].dtype)
    table = torch.where(c["table"] == c["src"].shape[0], c["src"].shape[0] + 500, c["table"]).to(torch.int32)
    big = [torch.cat((c["src"], extra)), table, *args[2:]]  # > N*K rows: the masked-tap path
    assert big[0].shape[0] > table.numel()
    torch.testing.assert_close(torch.ops.lc.gather_conv(*big), torch.ops.lc.gather_conv(*args))
    n = c["src"].shape[0]
    small = c["table"].clone()
    small[::2, 0] = n + 1  # out of bounds: -inf; entries n read zero
    big_pool = torch.where(small == n, n + 500, torch.where(small == n + 1, n + 501, small))
    want = torch.ops.lc.gather_max(c["src"], small)
    torch.testing.assert_close(torch.ops.lc.gather_max(big[0], big_pool), want)


@pytest.mark.parametrize("large_source", [False, True])
def test_im2col_and_per_tap_paths_agree(monkeypatch, large_source: bool) -> None:
    """One gather + GEMM per conv (small convs) and one GEMM per tap (large ones): same conv."""
    c = _case(kernel=(3, 3), src_col=1)
    args = _conv_args(c)
    if large_source:  # more source rows than table entries: the masked path of both
        args[0] = torch.cat((c["src"], torch.randn(500, c["src"].shape[1], dtype=c["src"].dtype)))
        args[1] = torch.where(c["table"] == c["src"].shape[0], args[0].shape[0], c["table"]).to(torch.int32)
    im2col = torch.ops.lc.gather_conv(*args)
    monkeypatch.setattr(lc.ops.torch_kernels, "IM2COL_MAX_ELEMENTS", 0)
    per_tap = torch.ops.lc.gather_conv(*args)
    torch.testing.assert_close(im2col, per_tap)
    torch.testing.assert_close(per_tap, _reference(c, scale=0.5, relu=True, with_residual=True))


def test_gather_linear_is_a_matmul_with_epilogue() -> None:
    c = _case(kernel=(1, 1), src_col=3)
    w = c["weight"].flatten(1)
    got = torch.ops.lc.gather_linear(c["src"], w.t().contiguous(), c["bias"], c["residual"], 0.2, True, 3)
    want = (c["residual"] + 0.2 * (c["src"][:, 3:] @ w.t() + c["bias"])).relu()
    torch.testing.assert_close(got, want)


def test_transpose_table_inverts_each_tap() -> None:
    c = _case()
    table, num_src = c["table"], c["src"].shape[0]
    inverse = torch.ops.lc.transpose_table(table, num_src)
    assert inverse.shape == (num_src, table.shape[1]) and inverse.dtype == table.dtype
    for n, t in zip(*torch.nonzero(table < num_src).t().tolist(), strict=True):
        assert int(inverse[table[n, t], t]) == n
    assert int((inverse < table.shape[0]).sum()) == int((table < num_src).sum())


def test_readme_example_is_two_masked_convs() -> None:
    from lc.ops.region_tables import RegionTables

    gen = torch.Generator().manual_seed(5)
    x, mask = torch.randn(2, 4, 7, 6, generator=gen), torch.rand(2, 7, 6, generator=gen) < 0.5
    w1, b1 = torch.randn(5, 4, 3, 3, generator=gen), torch.randn(5, generator=gen)
    w2, b2 = torch.randn(3, 5, 3, 3, generator=gen), torch.randn(3, generator=gen)
    tables = RegionTables(mask)
    assert tables.num_rows >= int(mask.sum())  # a bucket
    rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    table = tables.table((3, 3), (1, 1), "dense")
    h = torch.ops.lc.gather_conv(rows, table, pack_conv_weight(w1), b1, None, 1.0, True, 0, None)
    own = tables.table((3, 3), (2, 2), "active")
    h = torch.ops.lc.gather_conv(h, own, pack_conv_weight(w2), b2, None, 1.0, False, 0, None)
    m = mask[:, None].float()
    want = m * F.conv2d(m * F.conv2d(x, w1, b1, padding=1).relu(), w2, b2, padding=2, dilation=2)
    torch.testing.assert_close(tables.scatter(h), want, rtol=1e-4, atol=1e-4)


def test_into_ops_fill_their_slice_of_a_concat_buffer() -> None:
    c = _case(src_col=1)
    args = _conv_args(c)
    packed, num_out, cout = args[2], c["table"].shape[0], c["weight"].shape[0]
    pool = c["table"].clone()
    pool[::3, 1] = c["src"].shape[0] + 1
    buffer = torch.full((num_out, 2 + cout + c["src"].shape[1] + 1), 7.0, dtype=torch.float64)
    torch.ops.lc.gather_conv_into(c["src"], c["table"], packed, c["bias"], True, 1, buffer, 2)
    torch.ops.lc.gather_max_into(c["src"], pool, buffer, 2 + cout)
    seven = torch.full((num_out, 2), 7.0, dtype=torch.float64)
    conv = torch.ops.lc.gather_conv(c["src"], c["table"], packed, c["bias"], None, 1.0, True, 1)
    expected = torch.cat((seven, conv, torch.ops.lc.gather_max(c["src"], pool), seven[:, :1]), 1)
    assert torch.equal(buffer, expected)  # its slice, bitwise; the other columns untouched


# --- opcheck and gradients ------------------------------------------------------------------------
def _opcheck_all(device: str, dtype: torch.dtype) -> None:
    c = _case(device=device, dtype=dtype, src_col=1)
    torch.library.opcheck(torch.ops.lc.gather_conv.default, _conv_args(c, grad=True))
    transposed = torch.ops.lc.transpose_table(c["table"], c["src"].shape[0])
    with_t = _conv_args(c, relu=False, grad=True)
    with_t[-1] = transposed
    torch.library.opcheck(torch.ops.lc.gather_conv.default, with_t)
    w = c["weight"][:, :, 1, 1].t().contiguous().requires_grad_()
    torch.library.opcheck(torch.ops.lc.gather_linear.default,
                          (c["src"].requires_grad_(), w, c["bias"], None, 0.7, True, 1))
    grad = torch.randn(c["table"].shape[0], c["weight"].shape[0], device=device, dtype=dtype)
    torch.library.opcheck(torch.ops.lc.gather_weight_grad.default, (c["src"].detach(), c["table"], grad, 1))
    torch.library.opcheck(torch.ops.lc.transpose_table.default, (c["table"], c["src"].shape[0]))
    pool = c["table"].clone()
    pool[::3, 1] = c["src"].shape[0] + 1  # out-of-bounds taps (-inf)
    torch.library.opcheck(torch.ops.lc.gather_max.default, (c["src"].detach().requires_grad_(), pool))
    src, packed = c["src"].detach(), pack_conv_weight(c["weight"])
    buffer = torch.zeros(c["table"].shape[0], 11, device=device, dtype=dtype)
    torch.library.opcheck(torch.ops.lc.gather_conv_into.default,
                          (src, c["table"], packed, c["bias"], True, 1, buffer, 2))
    torch.library.opcheck(torch.ops.lc.gather_max_into.default, (src, pool, buffer, 3))


@pytest.mark.slow
def test_opcheck_cpu() -> None:
    _opcheck_all("cpu", torch.float64)


@pytest.mark.parametrize("use_table_t", [False, True])
def test_gradcheck_cpu(use_table_t: bool) -> None:
    c = _case(kernel=(1, 3), src_col=2)
    args = _conv_args(c, scale=0.5, relu=False, grad=True)
    if use_table_t:
        args[-1] = torch.ops.lc.transpose_table(c["table"], c["src"].shape[0])

    def fn(src, weight, bias, residual):
        return torch.ops.lc.gather_conv(src, args[1], weight, bias, residual, 0.5, False, 2, args[-1])

    assert torch.autograd.gradcheck(fn, (args[0], args[2], args[3], args[4]))


def test_gather_max_gradcheck() -> None:
    c = _case(src_col=0)
    pool = c["table"].clone()
    pool[::3, 1] = c["src"].shape[0] + 1  # out-of-bounds taps (-inf)
    src = c["src"].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda s: torch.ops.lc.gather_max(s, pool), (src,))


# --- Triton interpreter ---------------------------------------------------------------------------
def _interpreter_errors() -> dict:
    """Max |triton - torch| of every op output and gradient, float32, under the interpreter."""
    from lc.ops.library import set_library_backend

    errors = {}
    for name, kw in {"conv3x3": {}, "conv1x7_col": dict(kernel=(1, 7), dilation=(2, 2), src_col=3),
                     "int64": dict(int32=False), "strided": dict(src_col=2)}.items():
        c = _case(dtype=torch.float32, cin=20, cout=18, **kw)
        if name == "strided":  # channels not unit-stride (a batch-1 NCHW map read as rows), residual too
            c["src"] = c["src"].t().contiguous().t()
            c["residual"] = c["residual"].t().contiguous().t()
        results = {}
        for backend in ("torch", "triton"):
            set_library_backend(backend)
            strided = name == "strided"  # no ReLU, scale 1: the expanded gradient reaches the kernels as is
            args = _conv_args(c, scale=1.0 if strided else 0.5, relu=not strided, grad=True)
            out = torch.ops.lc.gather_conv(*args)
            if strided:  # the gradient of a sum: expanded, strides (0, 0)
                grads = torch.autograd.grad(out.sum(), [args[0], args[2], args[3], args[4]])
            else:
                grads = torch.autograd.grad(out, [args[0], args[2], args[3], args[4]], torch.ones_like(out))
            w = args[2].detach()[0].requires_grad_()
            lin = torch.ops.lc.gather_linear(args[0], w, args[3], None, 1.0, True, c["src_col"])
            results[backend] = [out, *grads, lin, *torch.autograd.grad(lin.sum(), [w])]
        set_library_backend("torch")
        errors[name] = max(float((a - b).abs().max()) for a, b in
                           zip(results["torch"], results["triton"], strict=True))
    return errors


@pytest.fixture(scope="module")
def interpreter_errors() -> dict:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_triton_interpreter_matches_torch(interpreter_errors: dict) -> None:
    assert set(interpreter_errors) == {"conv3x3", "conv1x7_col", "int64", "strided"}
    for name, err in interpreter_errors.items():
        assert err < 1e-4, (name, err)


# --- CUDA ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_opcheck_cuda() -> None:
    _opcheck_all("cuda", torch.float32)


if __name__ == "__main__":
    print(json.dumps(_interpreter_errors()))
