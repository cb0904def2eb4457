"""The backbone interface: every backbone's region stages equal their masked dense definition (float64,
forward and backward), its assembly equals timm's network, and the cascade runs on each of them."""

import pytest
import timm
import torch
from helpers import randomise_bn

from lc.models.backbone_convnext import ConvNeXtBackbone
from lc.models.backbone_irnet import IRNetBackbone
from lc.models.backbone_resnet import ResNetBackbone
from lc.models.backbones import BACKBONES, build_backbone
from lc.models.cascade import LayerCascade
from lc.models.complexity import count_flops
from lc.ops.active_set import ActiveSet

TOL = dict(atol=1e-6, rtol=1e-6)
TINY_RESNET = dict(backbone="resnet", timm_arch="resnet101", layers=[1, 2, 2, 2], channels=[8, 8, 16, 16],
                   stem_width=8, stage2_blocks=1)
TINY_IRNET = dict(backbone="irnet", width_mult=0.0625, block_counts=[1, 1, 1])
TINY_CONVNEXT = dict(backbone="convnext", timm_arch="convnext_atto", depths=[1, 1, 2, 2], dims=[8, 8, 16, 16])
ALL = pytest.mark.parametrize("cfg", [TINY_RESNET, TINY_CONVNEXT, TINY_IRNET],
                              ids=["resnet", "convnext", "irnet"])


def _randomise(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics, LayerNorm affines and layer scales (timm's gamma starts at 1e-6)."""
    g = torch.Generator().manual_seed(seed)
    randomise_bn(net, g)
    for p in net.parameters():
        if p.dim() == 1:  # norms' affines, biases, layer scales
            p.data.copy_(torch.rand(p.shape, generator=g) + 0.5)


def _tiny(cfg: dict):
    torch.manual_seed(0)
    net = build_backbone(cfg).double().eval()
    _randomise(net, 0)
    return net


def _loss(y: torch.Tensor) -> torch.Tensor:
    return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y.contiguous())).sum()


@ALL
@pytest.mark.parametrize("kind", ["empty", "sparse", "full"])
def test_region_stages_equal_masked_dense(cfg, kind):
    net = _tiny(cfg)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, net.stage_channels[0], 7, 9, generator=g, dtype=torch.float64, requires_grad=True)
    if kind == "sparse":
        mask2 = torch.rand(2, 7, 9, generator=g) < torch.tensor([0.6, 0.3]).view(2, 1, 1)
        mask3 = mask2 & (torch.rand(2, 7, 9, generator=g) < 0.5)
    else:
        mask2 = mask3 = torch.full((2, 7, 9), kind == "full")
    ref2 = net.run_stage_masked_dense(2, x, mask2)
    ref3 = net.run_stage_masked_dense(3, ref2, mask3)
    assert not ref3[~mask3.unsqueeze(1).expand_as(ref3)].any()
    active2, active3 = ActiveSet.from_mask(mask2), ActiveSet.from_mask(mask3)
    feat2 = net.run_stage_region(2, x, active2)
    feat3 = net.run_stage_region(3, feat2, active3, source=active2)
    assert feat2.shape == (active2.num_active, net.stage_channels[1])
    assert feat3.shape == (active3.num_active, net.stage_channels[2])
    torch.testing.assert_close(active2.scatter(feat2), ref2, **TOL)
    torch.testing.assert_close(active3.scatter(feat3), ref3, **TOL)
    torch.testing.assert_close(net.run_stage_region(3, active2.scatter(feat2), active3), feat3, **TOL)
    if kind == "full":  # every pixel active: the plain dense stages
        with torch.no_grad():
            torch.testing.assert_close(ref2, net.forward_stage(2, x), **TOL)
    if kind == "empty":
        return
    weights = [p for p in net.parameters() if p.requires_grad and p.dim() == 4]
    ref_grads = torch.autograd.grad(_loss(ref2) + _loss(ref3), [x, *weights], allow_unused=True)
    got_grads = torch.autograd.grad(_loss(active2.scatter(feat2)) + _loss(active3.scatter(feat3)),
                                    [x, *weights], allow_unused=True)
    for a, b in zip(got_grads, ref_grads, strict=True):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, **TOL)


def test_resnet_assembly_equals_timm_feature_maps():
    torch.manual_seed(0)
    kwargs = dict(layers=(1, 2, 2, 2), channels=(8, 8, 16, 16), stem_width=8)
    ref = timm.create_model("resnet101", pretrained=False, output_stride=8, features_only=True, **kwargs)
    randomise_bn(ref, torch.Generator().manual_seed(3))
    ref = ref.double().eval()
    ours = ResNetBackbone("resnet101", **kwargs, stage2_blocks=1).double().eval()
    report = ours.load_imagenet(ref.state_dict(), {})
    assert not report["skipped"]
    x = torch.randn(1, 3, 37, 45, dtype=torch.float64)
    with torch.no_grad():
        maps = ref(x)
        f1, f2, f3 = ours.forward_stages(x)
        torch.testing.assert_close(f1, maps[2], **TOL)  # layer2: output stride 8
        torch.testing.assert_close(f3, maps[4], **TOL)  # layer4 (dilated at output stride 8)
        torch.testing.assert_close(ours.layer3(f1), maps[3], **TOL)
    assert tuple(f1.shape[2:]) == ours.output_size(37, 45) == tuple(f3.shape[2:])


def test_convnext_assembly_equals_timm_feature_maps():
    torch.manual_seed(0)
    kwargs = dict(depths=(1, 1, 2, 2), dims=(8, 8, 16, 16))
    ref = timm.create_model("convnext_atto", pretrained=False, output_stride=8, features_only=True, **kwargs)
    _randomise(ref, 3)
    ref = ref.double().eval()
    ours = ConvNeXtBackbone("convnext_atto", **kwargs).double().eval()
    report = ours.load_imagenet({k.replace("stages_", "stages.").replace("stem_", "stem."): v
                                for k, v in ref.state_dict().items()}, {})
    assert not report["skipped"]
    x = torch.randn(1, 3, 37, 45, dtype=torch.float64)
    with torch.no_grad():
        maps = ref(x)
        f1, f2, f3 = ours.forward_stages(x)
        torch.testing.assert_close(ours.stages[2].blocks(f1), maps[2], **TOL)
        torch.testing.assert_close(f3, maps[3], **TOL)  # the last stage (dilated at output stride 8)
    assert tuple(f1.shape[2:]) == ours.output_size(37, 45) == tuple(f3.shape[2:])


def test_full_size_stage_cuts_match_irnet_flop_shares():
    with torch.device("meta"):
        nets = {"resnet101": ResNetBackbone("resnet101"), "convnext_tiny": ConvNeXtBackbone("convnext_tiny"),
                "irnet": IRNetBackbone(width_mult=1.0, block_counts=(5, 10, 5))}
    shares = {}
    for name, net in nets.items():
        x, flops = torch.zeros(1, 3, 512, 512, device="meta"), []
        for stage in (1, 2, 3):
            f, x = count_flops(net.forward_stage, stage, x)
            flops.append(f)
        shares[name] = [f / sum(flops) for f in flops]
    for ours, theirs in zip(shares["resnet101"], shares["irnet"], strict=True):
        assert abs(ours - theirs) < 0.01, shares
    for ours, theirs in zip(shares["convnext_tiny"], shares["irnet"], strict=True):
        assert abs(ours - theirs) < 0.025, shares
    assert nets["resnet101"].stage_channels == (512, 1024, 2048)


def test_every_block_type_has_a_region_plan():
    assert set(BACKBONES) >= {"irnet", "resnet", "convnext"}
    assert set(_tiny(TINY_RESNET).region_plan()) == {"Bottleneck"}
    assert set(_tiny(TINY_IRNET).region_plan()) >= {"Mixed_6a", "Block17", "Mixed_7a", "Block8", "ConvBN"}
    assert set(_tiny(TINY_CONVNEXT).region_plan()) == {"ConvNeXtBlock", "downsample"}
    with pytest.raises(ValueError, match="model.backbone"):
        build_backbone({"backbone": "vgg"})


@ALL
def test_cascade_on_every_backbone_compressed_equals_masked_dense(cfg):
    torch.manual_seed(0)
    model = LayerCascade(3, "lc", {**cfg, "head_channels": 4}, rho=0.4).double().eval()
    x = torch.randn(2, 3, 40, 48, dtype=torch.float64)
    with torch.no_grad():
        a = model(x, execution="compressed")
        b = model(x, execution="masked_dense")
    assert a.probs.shape[2:] == model.output_size(40, 48)
    torch.testing.assert_close(a.probs, b.probs, **TOL)
    assert torch.equal(a.decided_at_stage, b.decided_at_stage)
    member = LayerCascade(3, "irnet", {**cfg, "head_channels": 4}, depth=2)
    assert not any(k.startswith(("layer4", "mixed_7a")) for k in member.state_dict())


@pytest.mark.parametrize("kind", ["empty", "sparse", "full"])
def test_resnet_planned_inference_equals_masked_dense_and_the_per_layer_path(kind):
    """Without autograd ResNet's region stages run the cached plan (folded, packed, epilogues fused)."""
    from lc.models.region_irnet import configure_region
    net = _tiny(TINY_RESNET)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, net.stage_channels[0], 7, 9, generator=g, dtype=torch.float64)
    mask2 = torch.full((2, 7, 9), kind == "full")
    if kind == "sparse":
        mask2 = torch.rand(2, 7, 9, generator=g) < 0.5
    mask3 = mask2 & (torch.rand(2, 7, 9, generator=g) < 0.6)
    active2, active3 = ActiveSet.from_mask(mask2), ActiveSet.from_mask(mask3)
    with torch.no_grad():
        feat2 = net.run_stage_region(2, x, active2)
        feat3 = net.run_stage_region(3, feat2, active3, source=active2)
        ref2 = net.run_stage_masked_dense(2, x, mask2)
        torch.testing.assert_close(active2.scatter(feat2), ref2, **TOL)
        torch.testing.assert_close(active3.scatter(feat3), net.run_stage_masked_dense(3, ref2, mask3), **TOL)
        configure_region(planned=False)
        try:
            per_layer = net.run_stage_region(3, net.run_stage_region(2, x, active2), active3, source=active2)
        finally:
            configure_region(planned=True)
        torch.testing.assert_close(feat3, per_layer, **TOL)


def test_resnet_plan_is_built_once_rebuilt_after_a_weight_change_and_is_three_ops_a_block():
    from lc.bench.launches import OpCounter
    net = _tiny(TINY_RESNET)
    mask = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(3)) < 0.5
    active = ActiveSet.from_mask(mask)
    x = torch.randn(1, net.stage_channels[0], 6, 6, dtype=torch.float64)
    with torch.no_grad():
        net.run_stage_region(2, x, active)
        plan = net.stage_plan(2, torch.float64)
        assert net.stage_plan(2, torch.float64) is plan
        with OpCounter() as counter:
            net.run_stage_region(2, x, active)
        blocks = net._blocks(2)
        projections = sum(block.downsample is not None for _, block in blocks)
        registered = sum(n for op, n in counter.ops.items() if op.startswith("lc."))
        assert registered == 3 * len(blocks) + projections
        assert not counter.syncing()
        aten = [op for op in counter.ops if not op.startswith("lc.")]  # the input gather's index arithmetic
        compute = ("mm", "relu", "clamp", "conv", "add", "linear")
        assert not [op for op in aten if any(k in op for k in compute)], aten
        before = net.run_stage_region(2, x, active)
        state = {k: v * 2 if k.endswith("conv1.weight") else v for k, v in net.state_dict().items()}
        net.load_state_dict(state)
        assert net.stage_plan(2, torch.float64) is not plan
        assert not torch.allclose(net.run_stage_region(2, x, active), before)


def test_resnet_fold_batchnorm_keeps_its_outputs_dense_and_on_a_region():
    """The benchmarks' dense ResNet at its best (BN folded, torch's fuse_conv_bn_eval): same stages,
    and its region stages (planned and op by op) still equal masked dense."""
    net = _tiny(TINY_RESNET)
    g = torch.Generator().manual_seed(4)
    image = torch.randn(1, 3, 48, 40, generator=g, dtype=torch.float64)
    mask = torch.rand(1, 6, 5, generator=g) < 0.5
    with torch.no_grad():
        want = net.forward_stages(image)
        net.fold_batchnorm()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
        got = net.forward_stages(image)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, **TOL)
        active = ActiveSet.from_mask(mask)
        planned = net.run_stage_region(2, want[0], active)
        masked = net.run_stage_masked_dense(2, want[0], mask)
        torch.testing.assert_close(active.scatter(planned), masked, **TOL)
    per_layer = net.run_stage_region(2, want[0], active)  # under autograd: op by op
    torch.testing.assert_close(per_layer.detach(), planned, **TOL)
