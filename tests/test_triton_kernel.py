"""The Triton region-conv kernels (lc.ops.triton) against torch references, forward and backward.

On CPU the kernels run in Triton's interpreter, which must be switched on (TRITON_INTERPRET=1)
before triton is imported: this file runs itself as a subprocess with that variable set and
checks each case's errors here. The `gpu` tests run the compiled kernels on CUDA (fp32, fp16,
bf16, larger shapes) and are skipped without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import requires_triton

from lc.ops.active_set import ActiveSet

pytestmark = requires_triton

FP32_TOL = 1e-4  # max error relative to the reference's largest magnitude


# --- references and cases (shared by the interpreter subprocess and the GPU tests) ---------------
def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-6))


def _through_kernel_mask(got: torch.Tensor, preact: torch.Tensor) -> torch.Tensor:
    """The fp32 reference's ReLU taken with the kernel's own mask, after checking that the two masks
    differ only rarely and near zero (half precision flips pixels within rounding of zero)."""
    from lc.ops.precision import check_relu_flips

    check_relu_flips(got, preact)
    return preact * (got.detach() > 0)


def _grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=True)


def _case_dense_source(kernel, padding, dilation, batch=2, cin=5, cout=6, size=(7, 6), fraction=0.5,
                       device="cpu", dtype=torch.float32, seed=0, **epilogue):
    """A stage's first conv: the dense input flattened NHWC, gathered through a 'dense' table."""
    from lc.ops.triton import gather_conv

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, *size, generator=gen).to(device, dtype).requires_grad_()
    w = (torch.randn(cout, cin, *kernel, generator=gen) / (cin * kernel[0] * kernel[1]) ** 0.5)
    w = w.to(device, dtype).requires_grad_()
    b = torch.randn(cout, generator=gen).to(device, dtype).requires_grad_()
    mask = (torch.rand(batch, *size, generator=gen) < fraction).to(device)
    active = ActiveSet(mask)
    table = active.neighbour_table(kernel, dilation, padding, source="dense")
    rows = x.permute(0, 2, 3, 1).reshape(-1, cin)
    inputs = [x, w, b]
    residual = None
    if "scale" in epilogue:
        residual = torch.randn(active.num_active, cout, generator=gen).to(device, dtype).requires_grad_()
        inputs.append(residual)
    got = gather_conv(rows, table, w, b, residual=residual, **epilogue)
    # reference in fp32: dense conv, then the active pixels
    ref_inputs = [t.detach().float().requires_grad_() for t in inputs]
    conv = active.gather(F.conv2d(ref_inputs[0], ref_inputs[1], ref_inputs[2], 1, padding, dilation))
    if residual is not None:
        conv = ref_inputs[3] + epilogue["scale"] * conv
    want = _through_kernel_mask(got, conv) if epilogue.get("relu") else conv
    grad_out = torch.randn(got.shape, generator=gen).to(device)
    got_grads = _grads(got, inputs, grad_out.to(dtype))
    want_grads = _grads(want, ref_inputs, grad_out)
    errors = {"out": _rel_err(got, conv.relu() if epilogue.get("relu") else conv)}
    for name, g, r in zip(("x", "w", "b", "residual"), got_grads, want_grads, strict=False):
        errors[f"grad_{name}"] = _rel_err(g, r)
    return errors


def _case_active_source(kernel, padding, dilation, batch=2, cin=40, cout=20, size=(9, 8), fraction=0.6,
                        device="cpu", dtype=torch.float32, seed=1):
    """A conv inside a stage: (N, C) features, inactive neighbours read zero."""
    from lc.ops.triton import gather_conv

    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(batch, *size, generator=gen) < fraction).to(device)
    active = ActiveSet(mask)
    feat = torch.randn(active.num_active, cin, generator=gen).to(device, dtype).requires_grad_()
    w = (torch.randn(cout, cin, *kernel, generator=gen) / (cin * kernel[0] * kernel[1]) ** 0.5)
    w = w.to(device, dtype).requires_grad_()
    table = active.neighbour_table(kernel, dilation, padding, source="active")
    got = gather_conv(feat, table, w, None)
    ref_feat, ref_w = feat.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    want = active.gather(F.conv2d(active.scatter(ref_feat), ref_w, None, 1, padding, dilation))
    grad_out = torch.randn(got.shape, generator=gen).to(device)
    (gf, gw), (rf, rw) = _grads(got, (feat, w), grad_out.to(dtype)), _grads(want, (ref_feat, ref_w), grad_out)
    return {"out": _rel_err(got, want), "grad_feat": _rel_err(gf, rf), "grad_w": _rel_err(gw, rw)}


def _case_linear_residual(device="cpu", dtype=torch.float32, num_rows=150, cin=24, cout=20, seed=2):
    """A residual block's closing 1x1 conv: relu(residual + scale * (rows @ W.T + b))."""
    from lc.ops.triton import gather_linear

    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(num_rows, cin, generator=gen), torch.randn(cout, cin, generator=gen) / cin ** 0.5,
               torch.randn(cout, generator=gen), torch.randn(num_rows, cout, generator=gen)]
    inputs = [t.to(device, dtype).requires_grad_() for t in tensors]
    got = gather_linear(inputs[0], inputs[1], inputs[2], residual=inputs[3], scale=0.17, relu=True)
    ref = [t.detach().float().requires_grad_() for t in inputs]
    want = _through_kernel_mask(got, ref[3] + 0.17 * F.linear(ref[0], ref[1], ref[2]))
    grad_out = torch.randn(got.shape, generator=gen).to(device)
    errors = {"out": _rel_err(got, want)}
    for name, g, r in zip(("rows", "w", "b", "residual"), _grads(got, inputs, grad_out.to(dtype)),
                          _grads(want, ref, grad_out), strict=True):
        errors[f"grad_{name}"] = _rel_err(g, r)
    return errors


def _case_arbitrary_table(device="cpu", seed=3):
    """A table reading some rows twice through one tap (no transposed table: scatter-add fallback),
    with the weight gradient reduced over several row slices."""
    import lc.ops.triton.region_gemm as triton_gather
    from lc.ops.triton import gather_conv, transposed_table

    gen = torch.Generator().manual_seed(seed)
    num_src, num_out, cin, cout = 30, 70, 6, 5
    src = torch.randn(num_src, cin, generator=gen).to(device).requires_grad_()
    w = torch.randn(cout, cin, 1, 3, generator=gen).to(device).requires_grad_()
    table = torch.randint(0, num_src + 1, (num_out, 3), generator=gen).to(device)
    assert transposed_table(table, num_src) is None
    old = triton_gather.WEIGHT_GRAD_ROWS_PER_SPLIT
    triton_gather.WEIGHT_GRAD_ROWS_PER_SPLIT = 16
    try:
        got = gather_conv(src, table, w)
        grad_out = torch.randn(got.shape, generator=gen).to(device)
        gs, gw = _grads(got, (src, w), grad_out)
    finally:
        triton_gather.WEIGHT_GRAD_ROWS_PER_SPLIT = old
    ref_src, ref_w = src.detach().requires_grad_(), w.detach().requires_grad_()
    padded = torch.cat((ref_src, ref_src.new_zeros(1, cin)))
    cols = F.embedding(table, padded).reshape(num_out, 3 * cin)
    want = cols @ ref_w.permute(0, 2, 3, 1).reshape(cout, 3 * cin).T
    rs, rw = _grads(want, (ref_src, ref_w), grad_out)
    return {"out": _rel_err(got, want), "grad_src": _rel_err(gs, rs), "grad_w": _rel_err(gw, rw)}


def _case_empty(device="cpu"):
    """No active pixel: an empty output and zero gradients."""
    from lc.ops.triton import gather_conv

    src = torch.randn(10, 4, device=device, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, device=device, requires_grad=True)
    b = torch.randn(3, device=device, requires_grad=True)
    out = gather_conv(src, torch.empty(0, 9, dtype=torch.long, device=device), w, b)
    gs, gw, gb = _grads(out.sum(), (src, w, b), None)
    return {"shape": float(out.shape != (0, 3)), "grad_src": float(gs.abs().max()),
            "grad_w": float(gw.abs().max()), "grad_b": float(gb.abs().max())}


CASES = {
    "conv1x1": lambda: _case_dense_source((1, 1), (0, 0), (1, 1)),
    "conv3x3_dilated": lambda: _case_dense_source((3, 3), (2, 2), (2, 2)),
    "conv1x7_dilated": lambda: _case_dense_source((1, 7), (0, 6), (1, 2), cin=20, size=(5, 9)),
    "conv3x3_residual_relu": lambda: _case_dense_source((3, 3), (1, 1), (1, 1), scale=0.1, relu=True),
    "active_3x3_dilated": lambda: _case_active_source((3, 3), (2, 2), (2, 2)),
    "active_7x1": lambda: _case_active_source((7, 1), (3, 0), (1, 1), cin=17, cout=33),
    "linear_residual_relu": _case_linear_residual,
    "arbitrary_table": _case_arbitrary_table,
    "empty": _case_empty,
}


def _run_cases_in_this_process() -> dict[str, dict[str, float]]:
    return {name: case() for name, case in CASES.items()}


# --- the CPU interpreter -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def interpreter_errors() -> dict[str, dict[str, float]]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_interpreter_matches_torch(case: str, interpreter_errors: dict) -> None:
    errors = interpreter_errors[case]
    assert errors, f"{case} reported nothing"
    bad = {k: v for k, v in errors.items() if not v <= FP32_TOL}
    assert not bad, f"{case}: errors above {FP32_TOL}: {bad}"


# --- host-side logic (no kernel launch) ------------------------------------------------------------
def test_transposed_table_inverts_a_conv_table() -> None:
    from lc.ops.triton import transposed_table

    mask = torch.rand(2, 6, 5, generator=torch.Generator().manual_seed(4)) < 0.6
    active = ActiveSet(mask)
    table = active.neighbour_table((3, 3), 1, 1, source="active")
    inverse = transposed_table(table, active.num_active)
    assert inverse is not None and inverse.shape == (active.num_active, 9)
    assert transposed_table(table, active.num_active) is inverse  # cached
    num_out = table.shape[0]
    for t in range(9):
        for n in range(num_out):
            m = int(table[n, t])
            if m < active.num_active:
                assert int(inverse[m, t]) == n
        hits = inverse[:, t][inverse[:, t] < num_out]
        assert torch.equal(table[hits, t], (inverse[:, t] < num_out).nonzero().squeeze(1))


def test_cpu_tensors_need_cuda_or_interpreter() -> None:
    from lc.ops.triton import INTERPRET, gather_conv

    if INTERPRET:
        pytest.skip("this process runs the interpreter")
    with pytest.raises(ValueError, match="CUDA"):
        gather_conv(torch.randn(4, 2), torch.zeros(3, 1, dtype=torch.long), torch.randn(2, 2, 1, 1))


# --- CUDA ------------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
def test_gpu_fp32_cases() -> None:
    # both switches alike: the reference F.conv2d runs on cuDNN, the kernels follow matmul's
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cases = {
            "dense_3x3": _case_dense_source((3, 3), (2, 2), (2, 2), batch=4, cin=96, cout=160, size=(33, 31),
                                            device="cuda"),
            "active_1x7": _case_active_source((1, 7), (0, 6), (1, 2), batch=4, cin=128, cout=160,
                                              size=(32, 32), device="cuda"),
            "linear": _case_linear_residual(device="cuda", num_rows=5000, cin=384, cout=1088),
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    for name, errors in cases.items():
        bad = {k: v for k, v in errors.items() if not v <= 1e-4}
        assert not bad, f"{name}: {bad}"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_half_precision(dtype: torch.dtype) -> None:
    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # an exact reference
    try:
        cases = {
            "dense_3x3": _case_dense_source((3, 3), (1, 1), (1, 1), batch=2, cin=320, cout=256, size=(64, 64),
                                            device="cuda", dtype=dtype, scale=0.2, relu=True),
            "active_7x1": _case_active_source((7, 1), (6, 0), (2, 1), batch=8, cin=160, cout=192,
                                              size=(64, 64), device="cuda", dtype=dtype),
            "linear": _case_linear_residual(device="cuda", dtype=dtype, num_rows=20000, cin=448, cout=2080),
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    for name, errors in cases.items():
        bad = {k: v for k, v in errors.items() if not v <= tol}
        assert not bad, f"{name} {dtype}: {bad}"


@pytest.mark.gpu
@gpu
def test_gpu_region_conv_dispatches_to_triton() -> None:
    import lc.ops.triton.region_gemm as region_gemm
    from lc.ops.region_conv import gather_conv, set_region_backend

    src = torch.randn(500, 64, device="cuda")
    table = torch.randint(0, 501, (400, 9), device="cuda")
    w = torch.randn(32, 64, 3, 3, device="cuda")
    launches = []
    launch = region_gemm.launch_gather_gemm
    try:
        region_gemm.launch_gather_gemm = lambda *a, **k: launches.append(1) or launch(*a, **k)
        set_region_backend("auto")
        auto = gather_conv(src, table, w, None)
        assert launches, "auto did not reach the Triton kernel on CUDA"
        set_region_backend("triton")
        got = gather_conv(src, table, w, None)
        set_region_backend("torch")
        want = gather_conv(src, table, w, None)
    finally:
        region_gemm.launch_gather_gemm = launch
        set_region_backend("auto")
    assert _rel_err(got, want) < 1e-3 and _rel_err(auto, want) < 1e-3  # torch's GEMM may use TF32 here


if __name__ == "__main__":  # the interpreter subprocess: one JSON line of errors per case
    print(json.dumps(_run_cases_in_this_process()))
