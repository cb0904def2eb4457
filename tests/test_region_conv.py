"""Region convolution: every execution path equals `mask * conv2d`, forward and backward."""

import pytest
import torch
import torch.nn.functional as F
from helpers import requires_triton

from lc.ops.active_set import ActiveSet
from lc.ops.region_conv import (
    compressed_conv,
    dense_input_conv,
    gather_conv,
    region_conv2d,
    region_max_pool,
    set_region_backend,
)

TOL = dict(atol=1e-4, rtol=1e-4)


def _mask(kind: str, shape, generator) -> torch.Tensor:
    b, h, w = shape
    if kind == "empty":
        return torch.zeros(shape, dtype=torch.bool)
    if kind == "full":
        return torch.ones(shape, dtype=torch.bool)
    if kind == "one":
        m = torch.zeros(shape, dtype=torch.bool)
        m[-1, h // 2, w - 1] = True
        return m
    # ~30%, a different pattern per image (the second image denser)
    probs = torch.tensor([0.3, 0.5] + [0.3] * (b - 2))[:b].view(b, 1, 1)
    return torch.rand(shape, generator=generator) < probs


def _weighted_sum(y: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient differs per element, so that misplaced gradients show."""
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y.contiguous())
    return (y * weights).sum()


GEOMETRIES = [  # kernel, dilation, padding
    ((1, 1), 1, 0),
    ((3, 3), 1, 1),
    ((3, 3), 2, 2),
    ((3, 3), 4, 4),
    ((1, 7), 2, (0, 6)),
    ((7, 1), 1, (3, 0)),
]


@pytest.mark.parametrize("mask_kind", ["empty", "one", "sparse", "full"])
@pytest.mark.parametrize("kernel,dilation,padding", GEOMETRIES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_gather_and_compressed_equal_reference(mask_kind, kernel, dilation, padding, with_bias):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, *kernel, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    mask = _mask(mask_kind, (2, 9, 11), g)
    params = [x, weight] + ([bias] if with_bias else [])

    ref = region_conv2d(x, weight, bias, mask, padding=padding, dilation=dilation, impl="reference")
    ref_grads = torch.autograd.grad(_weighted_sum(ref), params)
    assert torch.equal(ref, F.conv2d(x, weight, bias, 1, padding, dilation) * mask[:, None])

    got = region_conv2d(x, weight, bias, mask, padding=padding, dilation=dilation, impl="gather")
    torch.testing.assert_close(got, ref, **TOL)
    for a, b in zip(torch.autograd.grad(_weighted_sum(got), params), ref_grads, strict=True):
        torch.testing.assert_close(a, b, **TOL)

    # the compressed path: the stage's first conv reads the dense input ...
    active = ActiveSet.from_mask(mask)
    first = active.scatter(dense_input_conv(x, active, weight, bias, padding, dilation))
    torch.testing.assert_close(first, ref, **TOL)
    for a, b in zip(torch.autograd.grad(_weighted_sum(first), params), ref_grads, strict=True):
        torch.testing.assert_close(a, b, **TOL)

    # ... later convs read the (N, C) matrix, zero at inactive pixels
    feat = active.gather(x)
    inner = active.scatter(compressed_conv(feat, active, weight, bias, padding, dilation))
    x_masked = x * mask[:, None]
    inner_ref = F.conv2d(x_masked, weight, bias, 1, padding, dilation) * mask[:, None]
    torch.testing.assert_close(inner, inner_ref, **TOL)
    inner_ref_grads = torch.autograd.grad(_weighted_sum(inner_ref), params)
    for a, b in zip(torch.autograd.grad(_weighted_sum(inner), params), inner_ref_grads, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_float32_valid_padding_and_4d_float_mask():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 10, 7, generator=g)
    weight = torch.randn(8, 6, 3, 3, generator=g)
    mask = (torch.rand(3, 1, 8, 5, generator=g) < 0.4).float()  # valid conv: 10x7 -> 8x5
    ref = region_conv2d(x, weight, None, mask, impl="reference")
    got = region_conv2d(x, weight, None, mask, impl="gather")
    assert got.shape == (3, 8, 8, 5)
    torch.testing.assert_close(got, ref, **TOL)
    torch.testing.assert_close(region_conv2d(x, weight, None, mask), ref, **TOL)
    empty = torch.zeros(3, 8, 5, dtype=torch.bool)
    assert not region_conv2d(x, weight, torch.ones(8), empty, impl="gather").any()


def test_bad_arguments_raise_clear_errors():
    x, weight = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    mask = torch.ones(1, 5, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="stride 1 only"):
        region_conv2d(x, weight, None, mask, stride=2, padding=1)
    with pytest.raises(ValueError, match="does not match the conv output"):
        region_conv2d(x, weight, None, mask)  # valid conv gives 3x3
    with pytest.raises(ValueError, match="only 0 and 1"):
        region_conv2d(x, weight, None, mask.float() * 0.5, padding=1)
    with pytest.raises(ValueError, match="impl must be"):
        region_conv2d(x, weight, None, mask, padding=1, impl="fast")
    active = ActiveSet.from_mask(mask)
    with pytest.raises(ValueError, match="size-preserving"):
        compressed_conv(active.gather(x), active, weight, None, padding=0)


def test_neighbour_tables_index_rows_and_are_cached():
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[0, 1, 1] = mask[0, 1, 2] = mask[1, 0, 0] = True
    active = ActiveSet.from_mask(mask)
    assert active.num_active == 3
    table = active.neighbour_table((1, 3), 1, (0, 1), source="active")
    # rows: (0,1,1) -> row 0, (0,1,2) -> row 1, (1,0,0) -> row 2; M = 3 reads zero
    assert table.tolist() == [[3, 0, 1], [0, 1, 3], [3, 2, 3]]
    dense = active.neighbour_table((1, 3), 1, (0, 1), source="dense")
    assert dense.tolist() == [[4, 5, 6], [5, 6, 7], [24, 12, 13]]  # M = 2*3*4 = 24 (out of bounds)
    assert active.neighbour_table((1, 3), 1, (0, 1), source="active") is table
    inner = ActiveSet.from_mask(mask & (torch.arange(4) == 2))
    assert inner.rows_in(active).tolist() == [1]
    assert inner.neighbour_table((1, 3), 1, (0, 1), source=active).tolist() == [[0, 1, 3]]
    with pytest.raises(ValueError, match="not a subset"):
        active.rows_in(inner)


def test_gather_conv_reads_zero_at_m_and_matches_manual_sum():
    g = torch.Generator().manual_seed(3)
    src = torch.randn(4, 3, generator=g, dtype=torch.float64)
    weight = torch.randn(2, 3, 1, 2, generator=g, dtype=torch.float64)
    table = torch.tensor([[0, 4], [4, 4], [3, 1]])
    out = gather_conv(src, table, weight, torch.tensor([1.0, -1.0], dtype=torch.float64))
    padded = torch.cat((src, torch.zeros(1, 3, dtype=torch.float64)))
    expected = torch.stack([padded[r[0]] @ weight[:, :, 0, 0].T + padded[r[1]] @ weight[:, :, 0, 1].T
                            for r in table]) + torch.tensor([1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_linear_rows_matches_linear():
    """`linear_rows` equals F.linear, forward and backward."""
    from lc.ops.region_conv import linear_rows

    g = torch.Generator().manual_seed(5)
    rows = torch.randn(37, 24, generator=g, requires_grad=True)
    weight = torch.randn(10, 24, generator=g, requires_grad=True)
    bias = torch.randn(10, generator=g)
    got = linear_rows(rows, weight, bias)
    torch.testing.assert_close(got, F.linear(rows, weight, bias), **TOL)
    grads = torch.autograd.grad(_weighted_sum(got), [rows, weight])
    ref_grads = torch.autograd.grad(_weighted_sum(F.linear(rows, weight, bias)), [rows, weight])
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("mask_kind", ["empty", "one", "sparse", "full"])
@pytest.mark.parametrize("kernel,padding", [(3, 1), ((1, 3), (0, 1)), (5, 2)])
@pytest.mark.parametrize("window_share", [0.0, 1e9])  # dense pool + gather / window gather
def test_region_max_pool_equals_masked_max_pool(mask_kind, kernel, padding, window_share, monkeypatch):
    import lc.ops.region_conv as rc

    monkeypatch.setattr(rc, "WINDOW_POOL_MAX_SHARE", window_share)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    mask = _mask(mask_kind, (2, 7, 8), g)
    active = ActiveSet.from_mask(mask)
    ref = F.max_pool2d(x, kernel, 1, padding) * mask[:, None]
    got = active.scatter(region_max_pool(x, active, kernel, padding))
    torch.testing.assert_close(got, ref)
    (ref_grad,) = torch.autograd.grad(_weighted_sum(ref), x)
    (got_grad,) = torch.autograd.grad(_weighted_sum(got), x)
    torch.testing.assert_close(got_grad, ref_grad)


@pytest.mark.parametrize("window_share", [0.0, 1e9])
def test_max_pool_and_conv_from_a_compressed_source(window_share, monkeypatch):
    """Stage 3 reads stage 2's (M, C) output: zeros outside it (ties with ReLU zeros included)."""
    import lc.ops.region_conv as rc

    monkeypatch.setattr(rc, "WINDOW_POOL_MAX_SHARE", window_share)
    g = torch.Generator().manual_seed(7)
    outer_mask = torch.rand(2, 6, 9, generator=g) < 0.6
    inner_mask = outer_mask & (torch.rand(2, 6, 9, generator=g) < 0.5)
    outer, inner = ActiveSet.from_mask(outer_mask), ActiveSet.from_mask(inner_mask)
    feat = torch.randn(outer.num_active, 3, generator=g, dtype=torch.float64).relu().requires_grad_()
    dense = outer.scatter(feat)

    ref = F.max_pool2d(dense, 3, 1, 1) * inner_mask[:, None]
    got = inner.scatter(region_max_pool(feat, inner, 3, 1, source=outer))
    torch.testing.assert_close(got, ref)
    (got_grad,) = torch.autograd.grad(_weighted_sum(got), feat)
    (ref_grad,) = torch.autograd.grad(_weighted_sum(ref), feat)
    torch.testing.assert_close(got_grad, ref_grad)

    weight = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64)
    ref = F.conv2d(dense, weight, None, 1, 2, 2) * inner_mask[:, None]
    got = inner.scatter(dense_input_conv(feat, inner, weight, None, 2, 2, source=outer))
    torch.testing.assert_close(got, ref, **TOL)


@requires_triton
def test_forced_triton_backend_fails_clearly_on_cpu():
    import lc.ops.triton as triton_ops
    if triton_ops.INTERPRET:
        pytest.skip("Triton's CPU interpreter is on: forcing triton on CPU is legitimate")
    set_region_backend("triton")
    try:
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            gather_conv(torch.randn(3, 2), torch.zeros(1, 1, dtype=torch.long), torch.randn(1, 2, 1, 1))
    finally:
        set_region_backend("auto")
    with pytest.raises(ValueError, match="region backend must be"):
        set_region_backend("cuda")
