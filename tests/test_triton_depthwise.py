"""The Triton depthwise region-conv kernel (lc.ops.triton.depthwise) against the torch path, forward
and backward, in Triton's CPU interpreter: TRITON_INTERPRET=1 must be set before triton is imported,
so this file runs itself as a subprocess with it and checks the errors it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import requires_triton

from lc.ops.active_set import ActiveSet
from lc.ops.depthwise import depthwise_conv, depthwise_gather

CASES = [  # (kernel, dilation, padding, source)
    ((7, 7), (2, 2), (6, 6), "dense"),
    ((3, 3), (1, 1), (1, 1), "active"),
    ((7, 7), (4, 4), (12, 12), "source"),
]


def _case(kernel, dilation, padding, source, backend, seed=0, device="cpu", channels=5, size=(2, 9, 11),
          dtype=torch.float32, rounded=None):
    """Outputs and gradients of one depthwise region conv; the input in `dtype` (after rounding its
    values to `rounded`: an fp32 reference of a bf16 run), the weights fp32 as autocast leaves them."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(size, generator=g) < 0.5
    outer = mask | (torch.rand(size, generator=g) < 0.5)
    active, big = ActiveSet(mask.to(device)), ActiveSet(outer.to(device))
    x = torch.randn(size[0], channels, *size[1:], generator=g).to(device, rounded or dtype).to(dtype)
    rows = {"dense": x, "active": active.gather(x), "source": big.gather(x)}[source].clone().requires_grad_()
    w = torch.randn(channels, 1, *kernel, generator=g).to(device).requires_grad_()  # fp32, as under autocast
    b = torch.randn(channels, generator=g).to(device).requires_grad_()
    where = big if source == "source" else source
    out = depthwise_conv(rows, active, w, b, padding, dilation, source=where, backend=backend)
    weights = torch.linspace(-1, 1, out.numel(), device=device).view_as(out)
    grads = torch.autograd.grad((out.float() * weights).sum(), [rows, w, b])
    return [out, *grads]


def _errors() -> list[float]:
    errors = []
    for case in CASES:
        got, want = _case(*case, backend="triton"), _case(*case, backend="torch")
        errors += [float((a - b).abs().max() / b.abs().max().clamp(min=1e-6))
                   for a, b in zip(got, want, strict=True)]
    # entries outside [0, M) read zero on both paths: -1 (out of bounds), M and M + 1; the source is
    # a view with rows before it, so a read at row -1 would find data, not zeros
    g = torch.Generator().manual_seed(4)
    base = torch.randn(12, 6, generator=g)
    src, taps = base[4:], torch.randn(6, 9, generator=g)
    table = torch.randint(-1, 10, (7, 9), generator=g)
    table[0, 0], table[1, 1], table[2, 2] = -1, 8, 9
    got = depthwise_gather(src, table, taps, None, backend="triton")
    want = depthwise_gather(src, torch.where((table >= 0) & (table < 8), table, 8), taps, backend="torch")
    assert torch.equal(depthwise_gather(src, table, taps, backend="torch"), want)
    errors.append(float((got - want).abs().max() / want.abs().max()))
    return errors


def test_torch_path_equals_dense_depthwise_conv():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 7, generator=g, dtype=torch.float64)
    w = torch.randn(4, 1, 7, 7, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 8, 7, generator=g) < 0.4
    active = ActiveSet(mask)
    dense = torch.nn.functional.conv2d(x, w, None, 1, 6, 2, groups=4)
    got = depthwise_conv(x, active, w, None, 6, 2, source="dense", backend="torch")
    torch.testing.assert_close(got, active.gather(dense))
    empty = ActiveSet(torch.zeros_like(mask))
    assert depthwise_gather(x[:0, :, 0, 0], empty.neighbour_table(3, 1, 1), w[:, :, :3, :3]).shape == (0, 4)


def test_backward_takes_a_half_src_beside_fp32_taps():
    """Under autocast the taps stay fp32 beside a bf16 src: the input gradient accumulates in fp32."""
    from types import SimpleNamespace

    pytest.importorskip("triton")
    from lc.ops.depthwise import _depthwise_torch
    from lc.ops.triton.depthwise import _DepthwiseGather

    g = torch.Generator().manual_seed(3)
    src = torch.randn(7, 4, generator=g)
    table = torch.randint(0, 8, (6, 9), generator=g)  # entry 7 reads zero
    taps, grad = torch.randn(4, 9, generator=g), torch.randn(6, 4, generator=g)
    ctx = SimpleNamespace(saved_tensors=(src.bfloat16(), table, taps),
                          needs_input_grad=(True, False, True, False), has_bias=False)
    grad_src, _, grad_taps, _ = _DepthwiseGather.backward(ctx, grad.bfloat16())
    src64, taps64 = src.bfloat16().double().requires_grad_(), taps.double().requires_grad_()
    want_src, want_taps = torch.autograd.grad(_depthwise_torch(src64, table, taps64, None), [src64, taps64],
                                              grad.bfloat16().double())
    assert grad_src.dtype == torch.bfloat16
    torch.testing.assert_close(grad_src.double(), want_src, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grad_taps.double(), want_taps, rtol=3e-2, atol=3e-2)


def test_backward_reads_entries_outside_the_source_as_the_zero_row():
    """-1, M and M + 1 read zero in the forward: their gradient goes nowhere (no out-of-bounds
    index_add, which is a device-side assert on CUDA)."""
    from types import SimpleNamespace

    pytest.importorskip("triton")
    from lc.ops.depthwise import _depthwise_torch
    from lc.ops.triton.depthwise import _DepthwiseGather

    g = torch.Generator().manual_seed(5)
    src, taps = torch.randn(7, 4, generator=g), torch.randn(4, 9, generator=g)
    grad = torch.randn(6, 4, generator=g)
    table = torch.randint(-1, 9, (6, 9), generator=g)  # -1 .. 8 = M + 1
    ctx = SimpleNamespace(saved_tensors=(src, table, taps), needs_input_grad=(True, False, True, False),
                          has_bias=False)
    grad_src, _, grad_taps, _ = _DepthwiseGather.backward(ctx, grad)
    src64, taps64 = src.double().requires_grad_(), taps.double().requires_grad_()
    clean = torch.where((table >= 0) & (table < 7), table, 7)
    want_src, want_taps = torch.autograd.grad(_depthwise_torch(src64, clean, taps64, None), [src64, taps64],
                                              grad.double())
    torch.testing.assert_close(grad_src.double(), want_src, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_taps.double(), want_taps, rtol=1e-5, atol=1e-5)


@requires_triton
def test_triton_kernel_in_the_interpreter_equals_torch_path():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(errors) == 4 * len(CASES) + 1
    assert max(errors) < 1e-5, errors


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_triton_depthwise_equals_torch_path(dtype: torch.dtype) -> None:
    """The kernel on CUDA against the torch path on the same rounded inputs: forward and every gradient,
    64 channels (several channel tiles), a bf16 src beside fp32 taps as autocast gives them."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for case in CASES:
            kw = dict(device="cuda", channels=64, size=(2, 24, 20))
            got = _case(*case, backend="triton", dtype=dtype, **kw)
            want = _case(*case, backend="torch", rounded=dtype, **kw)  # fp32 on the same rounded input
            for a, b in zip(got, want, strict=True):
                err = float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-6))
                assert err < (2e-2 if dtype == torch.bfloat16 else 1e-4), (case, dtype, err)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


if __name__ == "__main__":
    print(json.dumps(_errors()))
