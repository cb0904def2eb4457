"""DeepLab-v2 (Chen et al., TPAMI 2017), the ResNet-101 + ASPP variant: a speed baseline (Table 3).

ResNet-101 with atrous convolution (layer3 dilated 2, layer4 dilated 4, output stride 8) and ASPP:
four parallel 3x3 convolutions from the 2048-channel features straight to the class scores, with
rates 6/12/18/24, summed (the paper's ASPP-L). Logits are upsampled bilinearly x8 to the input.
Only used for timing and parameter counts, so the weights are random (no ImageNet download).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import resnet101

__all__ = ["ASPP", "DeepLabV2", "deeplab_v2"]


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of DeepLab-v2: parallel dilated 3x3 convs, outputs summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate, bias=True) for rate in rates
        )
        for branch in self.branches:
            # DeepLab-v2 initialises the classifier convs with N(0, 0.01) and zero bias
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabV2(nn.Module):
    """ResNet-101 (output stride 8) + ASPP; `forward` returns logits at the input resolution."""

    def __init__(self, num_classes: int = 21, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        # stride 1 and dilation 2 / 4 in layer3 / layer4 instead of stride 2: output stride 8
        trunk = resnet101(weights=None, replace_stride_with_dilation=[False, True, True])
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.layer1 = trunk.layer1
        self.layer2 = trunk.layer2
        self.layer3 = trunk.layer3
        self.layer4 = trunk.layer4
        self.aspp = ASPP(trunk.fc.in_features, num_classes, rates)
        self.num_classes = num_classes
        self.output_stride = 8

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.aspp(self.forward_features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def deeplab_v2(num_classes: int = 21) -> DeepLabV2:
    """DeepLab-v2 ResNet-101 ASPP-L with random weights (timing only)."""
    return DeepLabV2(num_classes=num_classes)
