"""IRNet stages 2 and 3 on the compressed path equal the masked dense reference."""

import pytest
import torch
from helpers import randomise_bn

from lc.models.irnet import IRNet
from lc.models.plan_cache import invalidate_plans
from lc.models.region_irnet import run_stage_compressed, run_stage_masked_dense
from lc.ops.active_set import ActiveSet

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def narrow_irnet() -> IRNet:
    torch.manual_seed(0)
    net = IRNet(width_mult=0.0625, block_counts=(1, 2, 2), output_stride=8).double().eval()
    randomise_bn(net, torch.Generator().manual_seed(0))
    return net


def _masks(kind: str, shape, g):
    if kind == "empty":
        m2 = torch.zeros(shape, dtype=torch.bool)
        return m2, m2
    if kind == "full":
        m2 = torch.ones(shape, dtype=torch.bool)
        return m2, m2
    m2 = torch.rand(shape, generator=g) < torch.tensor([0.6, 0.3]).view(2, 1, 1)
    return m2, m2 & (torch.rand(shape, generator=g) < 0.5)


def _loss(y: torch.Tensor) -> torch.Tensor:
    return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y.contiguous())).sum()


@pytest.mark.parametrize("kind", ["empty", "sparse", "full"])
def test_stages_2_and_3_compressed_equal_masked_dense(narrow_irnet, kind):
    net = narrow_irnet
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, net.stage_channels[0], 7, 9, generator=g, dtype=torch.float64, requires_grad=True)
    mask2, mask3 = _masks(kind, (2, 7, 9), g)
    weights = [net.mixed_6a.branch0.conv.weight, net.repeat_1[1].branch1[2].conv.weight,
               net.mixed_7a.branch2[1].conv.weight, net.block8.conv2d.weight, net.conv2d_7b.conv.weight]

    ref2 = run_stage_masked_dense(net, 2, x, mask2)
    ref3 = run_stage_masked_dense(net, 3, ref2, mask3)
    assert not ref3[~mask3.unsqueeze(1).expand_as(ref3)].any()

    active2, active3 = ActiveSet.from_mask(mask2), ActiveSet.from_mask(mask3)
    feat2 = run_stage_compressed(net, 2, x, active2)
    feat3 = run_stage_compressed(net, 3, feat2, active3, source=active2)  # no densifying between
    assert feat2.shape == (active2.num_active, net.stage_channels[1])
    torch.testing.assert_close(active2.scatter(feat2), ref2, **TOL)
    torch.testing.assert_close(active3.scatter(feat3), ref3, **TOL)
    # stage 3 from the dense (scattered) stage-2 output gives the same
    torch.testing.assert_close(run_stage_compressed(net, 3, active2.scatter(feat2), active3), feat3, **TOL)

    if kind == "empty":
        return
    ref_grads = torch.autograd.grad(_loss(ref2) + _loss(ref3), [x, *weights])
    got_grads = torch.autograd.grad(_loss(active2.scatter(feat2)) + _loss(active3.scatter(feat3)),
                                    [x, *weights])
    for a, b in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_full_mask_equals_plain_dense_stage(narrow_irnet):
    net = narrow_irnet
    x = torch.randn(1, net.stage_channels[0], 6, 5, dtype=torch.float64)
    active = ActiveSet.from_mask(torch.ones(1, 6, 5, dtype=torch.bool))
    with torch.no_grad():
        dense = net.forward_stage(2, x)
        torch.testing.assert_close(active.scatter(run_stage_compressed(net, 2, x, active)), dense, **TOL)
        # second call: the folded-weight cache is used and still right
        torch.testing.assert_close(active.scatter(run_stage_compressed(net, 2, x, active)), dense, **TOL)
        # an in-place edit outside an optimiser must invalidate the plans explicitly
        net.conv2d_7b.conv.weight.mul_(2.0)
        invalidate_plans()
        try:
            dense3 = net.forward_stage(3, dense)
            torch.testing.assert_close(active.scatter(run_stage_compressed(net, 3, dense, active)),
                                       dense3, **TOL)
        finally:
            net.conv2d_7b.conv.weight.div_(2.0)
            invalidate_plans()


def test_per_layer_fold_follows_replaced_parameters():
    """The per-layer path's fold cache matches the very tensors it folded: a parameter replaced
    twice between calls (the third tensor may take the freed first one's address, both at version
    0) is folded anew."""
    torch.manual_seed(0)
    net = IRNet(width_mult=0.0625, block_counts=(1, 1, 1), output_stride=8).eval()
    randomise_bn(net, torch.Generator().manual_seed(0))
    conv = net.conv2d_7b.conv
    x = torch.randn(1, net.stage_channels[1], 5, 6)
    active = ActiveSet.from_mask(torch.ones(1, 5, 6, dtype=torch.bool))
    with torch.no_grad():
        original = conv.weight.detach().clone()
        conv.weight = torch.nn.Parameter(original * 3.0)
        run_stage_compressed(net, 3, x, active, planned=False)  # folds the x3 weight (version 0)
        conv.weight = torch.nn.Parameter(original * 5.0)
        conv.weight = torch.nn.Parameter(original * 2.0)
        got = active.scatter(run_stage_compressed(net, 3, x, active, planned=False))
        torch.testing.assert_close(got, net.forward_stage(3, x), atol=1e-4, rtol=1e-4)


def test_region_execution_refuses_training_bn_and_strided_stages():
    net = IRNet(width_mult=0.0625, block_counts=(1, 1, 1)).train()
    active = ActiveSet.from_mask(torch.ones(1, 4, 4, dtype=torch.bool))
    x = torch.randn(1, net.stage_channels[0], 4, 4)
    with pytest.raises(RuntimeError, match="eval-mode"):
        run_stage_compressed(net, 2, x, active)
    with pytest.raises(ValueError, match="stages 2 and 3"):
        run_stage_compressed(net.eval(), 1, x, active)
    strided = IRNet(width_mult=0.0625, block_counts=(1, 1, 1), output_stride=16).eval()
    with pytest.raises(ValueError, match="output_stride 8"):
        run_stage_compressed(strided, 2, x, active)
    with pytest.raises(ValueError, match="stages 2 and 3"):
        run_stage_masked_dense(net.eval(), 1, x, active.mask)
