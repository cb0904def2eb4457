"""Region execution on CUDA (`gpu` marker, skipped without a GPU), and the precision metric on CPU.

Every GPU test runs with both TF32 switches (cuDNN's and matmul's) set alike, so the Triton
kernels and the cuDNN reference compute in the same precision. Half-precision gradients are
compared with a reference backward that uses the kernel's own ReLU mask, after checking that the
mask flips are rare and only near zero (`lc.ops.precision`).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import randomise_bn

import lc.ops.library  # noqa: F401
from lc.models.irnet import IRNet
from lc.models.region_irnet import run_stage_compressed, run_stage_masked_dense
from lc.ops.active_set import ActiveSet
from lc.ops.library import pack_conv_weight
from lc.ops.precision import check_relu_flips, relu_flips

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --- the metric (CPU) -------------------------------------------------------------------------------
def test_a_near_zero_flip_passes_and_a_wrong_row_fails() -> None:
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(2000, 16, generator=gen)
    pre[5, 3] = 1e-5  # within rounding of zero
    out = pre.relu()
    out[5, 3] = 0.0 if pre[5, 3] > 0 else 1e-6  # the kernel rounded it to the other side
    report = check_relu_flips(out, pre)
    assert report.count == 1
    wrong = out.clone()
    wrong[7] = (-pre[7]).relu()  # a wrong row: every sign inverted
    with pytest.raises(AssertionError, match="wrong result"):
        check_relu_flips(wrong, pre)
    assert relu_flips(wrong, pre).count >= 16


# --- CUDA ---------------------------------------------------------------------------------------
def _set_tf32(on: bool):
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    if not on and torch.backends.cuda.matmul.allow_tf32:  # TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 (NGC images)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
        pytest.skip("TF32 cannot be turned off (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE): no exact fp32 reference")
    return old


@pytest.fixture(params=[False, True], ids=["tf32_off", "tf32_on"])
def tf32(request):
    """Both TF32 switches set alike (restored after)."""
    old = _set_tf32(request.param)
    yield request.param
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture
def tf32_off():
    """An exact fp32 reference (cuDNN and matmul both without TF32), restored after."""
    old = _set_tf32(False)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _conv_case(dtype, kernel=(3, 3), dilation=(2, 2), batch=4, cin=128, cout=160, size=(32, 32), seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, *size, generator=gen) < 0.5
    active = ActiveSet(mask)
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
    table = active.neighbour_table(kernel, dilation, padding, source="active").to(torch.int32).cuda()
    src = torch.randn(active.num_active, cin, generator=gen).cuda()
    weight = (torch.randn(cout, cin, *kernel, generator=gen) / (cin * kernel[0] * kernel[1]) ** 0.5).cuda()
    bias = (0.1 * torch.randn(cout, generator=gen)).cuda()
    residual = torch.randn(active.num_active, cout, generator=gen).cuda()
    active_cuda = ActiveSet(mask.cuda())
    return dict(active=active_cuda, table=table, src=src, weight=weight, bias=bias, residual=residual,
                padding=padding, dilation=dilation, dtype=dtype)


def _reference_preact(c, src, weight, bias, residual, scale):
    dense = c["active"].scatter(src)
    conv = c["active"].gather(F.conv2d(dense, weight, bias, 1, c["padding"], c["dilation"]))
    return residual + scale * conv


def _rel(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-6))


@pytest.mark.gpu
@gpu
def test_gpu_fp32_matches_cudnn(tf32: bool) -> None:
    c = _conv_case(torch.float32)
    got = torch.ops.lc.gather_conv(c["src"], c["table"], pack_conv_weight(c["weight"]), c["bias"],
                                   c["residual"], 0.2, False, 0, None)
    want = _reference_preact(c, c["src"], c["weight"], c["bias"], c["residual"], 0.2)
    assert _rel(got, want) <= (5e-3 if tf32 else 1e-4)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_gradients_with_the_kernels_mask(dtype: torch.dtype, tf32_off) -> None:
    """The registered op's backward as production runs it: a column window (src_col 3) of a wider
    source, the transposed table passed in, several channel tiles (128 -> 160)."""
    tol = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    c = _conv_case(dtype)
    extra = torch.randn(c["src"].shape[0], 3, generator=torch.Generator().manual_seed(2)).cuda()
    inputs = [torch.cat((extra, c["src"]), 1), c["weight"], c["bias"], c["residual"]]
    low = [t.to(dtype).requires_grad_() for t in inputs]
    table_t = torch.ops.lc.transpose_table(c["table"], c["src"].shape[0])
    out = torch.ops.lc.gather_conv(low[0], c["table"], pack_conv_weight(low[1]), low[2], low[3], 0.2, True, 3,
                                   table_t)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).cuda()
    got_grads = list(torch.autograd.grad(out, low, grad_out.to(dtype)))
    assert torch.count_nonzero(got_grads[0][:, :3]) == 0  # columns the window does not read
    got_grads[0] = got_grads[0][:, 3:]
    ref = [t.to(dtype).float().requires_grad_() for t in [c["src"], *inputs[1:]]]  # the same rounded inputs
    preact = _reference_preact(c, ref[0], ref[1], ref[2], ref[3], 0.2)
    if dtype != torch.float32:
        check_relu_flips(out, preact)
    assert _rel(out, preact.relu()) <= tol
    masked = preact * (out.detach() > 0)  # the reference through the kernel's own mask
    for got, want in zip(got_grads, torch.autograd.grad(masked, ref, grad_out), strict=True):
        assert _rel(got, want) <= tol


def _stage_setup(batch=2, size=(24, 24), fraction=0.4):
    torch.manual_seed(0)
    net = IRNet(width_mult=0.5, block_counts=(1, 3, 2)).eval()
    randomise_bn(net)
    net = net.cuda()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, net.stage_channels[0], *size, generator=gen).relu().cuda()
    mask = (torch.rand(batch, *size, generator=gen) < fraction).cuda()
    return net, x, mask


@pytest.mark.gpu
@gpu
def test_gpu_planned_stage_equals_masked_dense_and_graphs_equal_eager(tf32: bool) -> None:
    net, x, mask = _stage_setup()
    active = ActiveSet(mask)
    with torch.no_grad():
        want = active.gather(run_stage_masked_dense(net, 2, x, mask))
        eager = run_stage_compressed(net, 2, x, active, graphs=False)
        graphed = run_stage_compressed(net, 2, x, active, graphs=True)
        again = run_stage_compressed(net, 2, x, active, graphs=True)  # a replay
        mask3 = mask & (torch.rand(mask.shape, device="cuda") < 0.5)
        active3 = ActiveSet(mask3)
        eager3 = run_stage_compressed(net, 3, eager, active3, source=active, graphs=False)
        graphed3 = run_stage_compressed(net, 3, eager, active3, source=active, graphs=True)
        want3 = active3.gather(run_stage_masked_dense(net, 3, active.scatter(eager), mask3))
    assert _rel(eager, want) <= (1e-2 if tf32 else 1e-4)
    assert _rel(eager3, want3) <= (1e-2 if tf32 else 1e-4)
    assert torch.equal(graphed, eager) and torch.equal(again, eager)
    assert torch.equal(graphed3, eager3)


def _same_count_elsewhere(mask: torch.Tensor, seed: int) -> torch.Tensor:
    """Another mask with exactly the same count per image (so the same row bucket), other pixels."""
    gen = torch.Generator().manual_seed(seed)
    flat = mask.flatten(1).cpu()
    out = torch.zeros_like(flat)
    for b in range(flat.shape[0]):
        out[b, torch.randperm(flat.shape[1], generator=gen)[: int(flat[b].sum())]] = True
    return out.view_as(mask).to(mask.device)


@pytest.mark.gpu
@gpu
def test_gpu_one_graph_serves_every_mask_of_its_bucket(tf32_off) -> None:
    """The tables are rebuilt inside the graph: a replay with another mask of the same count (same
    key, no new capture) equals the eager stage on that mask, for stages 2 and 3."""
    from lc.models.region_plan import stage_plan

    net, x, mask = _stage_setup()
    other = _same_count_elsewhere(mask, seed=5)
    assert not torch.equal(other, mask) and torch.equal(other.sum((1, 2)), mask.sum((1, 2)))
    keep = torch.rand(mask.shape, generator=torch.Generator().manual_seed(6)) < 0.5
    with torch.no_grad():
        first, second = ActiveSet(mask), ActiveSet(other)
        run_stage_compressed(net, 2, x, first, graphs=True)  # captured on the first mask
        plan2 = stage_plan(net, 2, torch.float32)
        captured = len(plan2.graphs)
        assert captured == 1
        replayed = run_stage_compressed(net, 2, x, second, graphs=True)
        eager = run_stage_compressed(net, 2, x, second, graphs=False)
        assert len(plan2.graphs) == captured  # the same key: replayed, not captured again
        assert torch.equal(replayed, eager)
        for source, feat in ((first, run_stage_compressed(net, 2, x, first, graphs=False)), (second, eager)):
            inner = source.mask & keep.to(source.mask.device)
            active3 = ActiveSet(inner)
            graphed3 = run_stage_compressed(net, 3, feat, active3, source=source, graphs=True)
            eager3 = run_stage_compressed(net, 3, feat, active3, source=source, graphs=False)
            assert torch.equal(graphed3, eager3)


@pytest.mark.gpu
@gpu
def test_gpu_resnet_planned_stages_equal_masked_dense(tf32: bool) -> None:
    """ResNet's planned inference (packed bottlenecks, fused epilogues) on the Triton kernels."""
    from lc.models.backbone_resnet import ResNetBackbone
    torch.manual_seed(0)
    net = ResNetBackbone("resnet101", layers=(1, 2, 2, 2), channels=(16, 16, 32, 64), stem_width=16,
                         stage2_blocks=1).eval()
    randomise_bn(net, torch.Generator().manual_seed(0))
    net = net.cuda()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, net.stage_channels[0], 16, 16, generator=gen).relu().cuda()
    mask2 = (torch.rand(2, 16, 16, generator=gen) < 0.4).cuda()
    mask3 = mask2 & (torch.rand(2, 16, 16, generator=gen) < 0.5).cuda()
    active2, active3 = ActiveSet(mask2), ActiveSet(mask3)
    with torch.no_grad():
        feat2 = net.run_stage_region(2, x, active2)
        feat3 = net.run_stage_region(3, feat2, active3, source=active2)
        want2 = net.run_stage_masked_dense(2, x, mask2)
        want3 = net.run_stage_masked_dense(3, want2, mask3)
    assert _rel(feat2, active2.gather(want2)) <= (1e-2 if tf32 else 1e-4)
    assert _rel(feat3, active3.gather(want3)) <= (1e-2 if tf32 else 1e-4)
