"""IRNet against timm's inception_resnet_v2, and its output-stride-8 geometry."""

import copy

import pytest
import timm
import torch
from helpers import randomise_bn

from lc.models.irnet import IRNet, freeze_batchnorm
from lc.models.timm_weights import load_timm_weights


@pytest.fixture(scope="module")
def timm_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("inception_resnet_v2", pretrained=False).eval()
    randomise_bn(model)
    return model


@pytest.mark.slow
def test_full_size_equals_timm_forward_features(timm_model):
    ours = IRNet(width_mult=1.0, block_counts=(10, 20, 10), output_stride=32, stem_padding="valid").eval()
    report = load_timm_weights(ours, timm_model.state_dict())
    assert report["skipped"] == ["classif.weight", "classif.bias"]
    x = torch.randn(1, 3, 139, 139)
    with torch.no_grad():
        expected = timm_model.forward_features(x)
        got = ours(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_shallow_model_loads_first_blocks_of_each_group(timm_model):
    ours = IRNet(block_counts=(5, 10, 5), output_stride=8, stem_padding="same").eval()
    report = load_timm_weights(ours, timm_model.state_dict())
    sd = timm_model.state_dict()
    assert "repeat.5.conv2d.weight" in report["skipped"]
    assert "repeat_1.9.conv2d.weight" in report["loaded"]
    assert "repeat_2.4.conv2d.weight" in report["skipped"]  # our repeat_2 holds 4 blocks + block8
    torch.testing.assert_close(ours.block8.conv2d.weight, sd["block8.conv2d.weight"])


def test_mismatched_checkpoint_fails_loudly(timm_model):
    ours = IRNet(block_counts=(10, 20, 10), output_stride=8)
    sd = dict(timm_model.state_dict())
    sd.pop("mixed_6a.branch0.conv.weight")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="missing tensor mixed_6a.branch0.conv.weight"):
        load_timm_weights(ours, sd)
    narrow = IRNet(width_mult=0.5)
    with pytest.raises(ValueError, match="same model.width_mult as the checkpoint"):
        load_timm_weights(narrow, timm_model.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_same_padding_gives_exact_output_stride(output_stride):
    model = IRNet(width_mult=0.125, block_counts=(1, 1, 2), output_stride=output_stride).eval()
    with torch.no_grad():
        feats = model.forward_stages(torch.randn(2, 3, 128, 96))
    strides = {8: (8, 8, 8), 16: (8, 16, 16), 32: (8, 16, 32)}[output_stride]
    for feat, stride, channels in zip(feats, strides, model.stage_channels, strict=True):
        assert feat.shape == (2, channels, 128 // stride, 96 // stride)


def test_output_stride_8_dilates_later_blocks():
    model = IRNet(width_mult=0.125, block_counts=(1, 1, 1), output_stride=8)
    assert model.mixed_6a.branch0.conv.stride == (1, 1)
    assert model.repeat_1[0].branch1[1].conv.dilation == (2, 2)
    assert model.mixed_7a.branch0[1].conv.dilation == (2, 2)
    assert model.block8.branch1[1].conv.dilation == (4, 4)


@pytest.mark.slow
def test_freeze_batchnorm_keeps_statistics():
    model = IRNet(width_mult=0.125, block_counts=(1, 1, 1))
    model.train()
    freeze_batchnorm(model)
    before = model.conv2d_1a.bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(model.conv2d_1a.bn.running_mean, before)
    assert not model.conv2d_1a.bn.weight.requires_grad


def test_fused_weight_bias_equals_conv_bn():
    torch.manual_seed(1)
    model = IRNet(width_mult=0.125, block_counts=(1, 1, 1)).eval()
    randomise_bn(model)
    layer = model.conv2d_4a
    x = torch.randn(1, layer.conv.in_channels, 9, 9)
    weight, bias = layer.fused_weight_bias()
    fused = torch.nn.functional.conv2d(x, weight, bias, padding=layer.conv.padding)
    with torch.no_grad():
        torch.testing.assert_close(torch.relu(fused), layer(x), atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_keeps_the_eval_network() -> None:
    """Benchmarks time IRNet with its BN folded: the same function, and the region plan reads it."""
    from lc.models.irnet import fold_batchnorm
    from lc.models.region_irnet import run_stage_compressed
    from lc.ops.active_set import ActiveSet

    torch.manual_seed(0)
    net = IRNet(width_mult=0.0625, block_counts=(1, 1, 1), output_stride=8).eval()
    randomise_bn(net)  # non-trivial statistics, so that a missed fold shows
    x = torch.randn(1, 3, 64, 64)
    folded = fold_batchnorm(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)
        f1 = net.forward_stage(1, x)
        mask = torch.rand(1, *f1.shape[2:], generator=torch.Generator().manual_seed(1)) < 0.4
        torch.testing.assert_close(run_stage_compressed(folded, 2, f1, ActiveSet(mask)),
                                   run_stage_compressed(net, 2, f1, ActiveSet(mask)), rtol=1e-4, atol=1e-4)
