"""The Table 3 speed baselines: DeepLab-v2 (ResNet-101 + ASPP) and SegNet."""

import pytest
import torch
from torchvision.models import resnet101

from lc.models.complexity import count_parameters
from lc.models.deeplab_v2 import DeepLabV2, deeplab_v2
from lc.models.segnet import SegNet, segnet
from lc.report.paper import load_paper_table

# SegNet paper (Badrinarayanan et al., TPAMI 2017, Table 6): 29.5M trainable parameters
SEGNET_PAPER_PARAMS_M = 29.5


@pytest.fixture(scope="module")
def deeplab() -> DeepLabV2:
    torch.manual_seed(0)
    return deeplab_v2(num_classes=21).eval()


@pytest.fixture(scope="module")
def segnet_model() -> SegNet:
    torch.manual_seed(0)
    return segnet(num_classes=21).eval()


@pytest.mark.slow
@pytest.mark.parametrize("size", [(64, 64), (67, 45)])
def test_deeplab_logits_at_input_resolution(deeplab, size):
    with torch.no_grad():
        logits = deeplab(torch.randn(2, 3, *size))
        features = deeplab.forward_features(torch.randn(1, 3, 64, 96))
    assert logits.shape == (2, 21, *size)
    assert torch.isfinite(logits).all()
    assert features.shape == (1, 2048, 8, 12)  # output stride 8


def test_deeplab_is_atrous_resnet101_with_aspp_l(deeplab):
    assert len(deeplab.layer3) == 23  # ResNet-101: 3 + 4 + 23 + 3 bottlenecks
    assert deeplab.layer3[1].conv2.dilation == (2, 2)
    assert deeplab.layer4[1].conv2.dilation == (4, 4)
    assert deeplab.layer4[0].conv2.stride == (1, 1)
    assert [b.dilation[0] for b in deeplab.aspp.branches] == [6, 12, 18, 24]
    # the ASPP sums its branches: the output equals the sum of the four branch outputs
    feat = torch.randn(1, 2048, 5, 5)
    with torch.no_grad():
        expected = sum(branch(feat) for branch in deeplab.aspp.branches)
        torch.testing.assert_close(deeplab.aspp(feat), expected)


def test_deeplab_parameters_match_the_paper(deeplab):
    table6 = load_paper_table(6)
    paper_m = float(table6.loc[table6["method"] == "DeepLab-v2", "params_m"].iloc[0])
    params = count_parameters(deeplab)
    # independent: the classification ResNet-101 minus its fc, plus ASPP 4 x (2048*9*21 + 21)
    with torch.device("meta"):
        classifier_net = resnet101(weights=None)
    trunk_params = count_parameters(classifier_net) - count_parameters(classifier_net.fc)
    assert params == trunk_params + 4 * (2048 * 9 * 21 + 21)
    assert abs(params / 1e6 - paper_m) / paper_m < 0.02


@pytest.mark.parametrize("size", [(64, 64), (67, 45)])
def test_segnet_logits_at_input_resolution(segnet_model, size):
    with torch.no_grad():
        logits = segnet_model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 21, *size)
    assert torch.isfinite(logits).all()


def test_segnet_structure_and_parameters(segnet_model):
    convs = [m for m in segnet_model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 26  # 13 encoder + 12 decoder + classifier
    encoder_widths = [m.out_channels for stage in segnet_model.encoder for m in stage.modules()
                      if isinstance(m, torch.nn.Conv2d)]
    assert encoder_widths == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    params = count_parameters(segnet_model)
    assert abs(params / 1e6 - SEGNET_PAPER_PARAMS_M) / SEGNET_PAPER_PARAMS_M < 0.01


def test_segnet_unpools_at_the_max_locations():
    torch.manual_seed(0)
    model = SegNet(num_classes=3).eval()
    x = torch.randn(1, 64, 4, 4)
    pooled, indices = model.pool(x)
    restored = model.unpool(pooled, indices, output_size=x.shape[-2:])
    # each 2x2 window keeps exactly its maximum, at its original position
    assert torch.count_nonzero(restored) == 64 * 4
    torch.testing.assert_close(restored.amax(dim=(-1, -2)), x.amax(dim=(-1, -2)))
    torch.testing.assert_close(restored[restored != 0], x[restored != 0])
