"""SegNet (Badrinarayanan et al., TPAMI 2017): a speed baseline (Table 3).

Encoder: the 13 convolutions of VGG16 (3x3, conv + BatchNorm + ReLU) in five stages, each ending in
a 2x2 max-pool that keeps its indices. Decoder: the mirror image, each stage starting with a max
unpooling at the stored indices, then 3x3 conv + BatchNorm + ReLU layers whose widths mirror the
encoder's; the last conv maps to the class scores (no BatchNorm / ReLU). Conv layers carry a bias,
as in the authors' Caffe model, so the parameter count matches the paper's 29.5M. Random weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["SegNet", "segnet"]

# (input channels, [output channels of each conv]) of the five encoder stages of VGG16
ENCODER_STAGES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (3, (64, 64)),
    (64, (128, 128)),
    (128, (256, 256, 256)),
    (256, (512, 512, 512)),
    (512, (512, 512, 512)),
)
# decoder stages in forward order (deepest first): the encoder's widths in reverse
DECODER_STAGES: tuple[tuple[int, tuple[int, ...]], ...] = (
    (512, (512, 512, 512)),
    (512, (512, 512, 256)),
    (256, (256, 256, 128)),
    (128, (128, 64)),
    (64, (64,)),  # followed by the classifier conv 64 -> num_classes
)


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def _conv_stack(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers = []
    for width in widths:
        layers.append(ConvBNReLU(in_channels, width))
        in_channels = width
    return nn.Sequential(*layers)


class SegNet(nn.Module):
    """VGG16-BN encoder, max-unpooling decoder; `forward` returns logits at the input resolution."""

    def __init__(self, num_classes: int = 21, in_chans: int = 3):
        super().__init__()
        stages = ((in_chans, ENCODER_STAGES[0][1]),) + ENCODER_STAGES[1:]
        self.encoder = nn.ModuleList(_conv_stack(c, widths) for c, widths in stages)
        self.decoder = nn.ModuleList(_conv_stack(c, widths) for c, widths in DECODER_STAGES)
        self.classifier = nn.Conv2d(DECODER_STAGES[-1][1][-1], num_classes, 3, padding=1)
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        self.num_classes = num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []  # (indices, size before pooling) of each encoder stage
        for stage in self.encoder:
            x = stage(x)
            size = x.shape[-2:]
            x, indices = self.pool(x)
            pooled.append((indices, size))
        for stage, (indices, size) in zip(self.decoder, reversed(pooled), strict=True):
            # output_size restores odd sizes that the pooling floored
            x = stage(self.unpool(x, indices, output_size=size))
        return self.classifier(x)


def segnet(num_classes: int = 21) -> SegNet:
    """SegNet (VGG16-BN encoder-decoder) with random weights (timing only)."""
    return SegNet(num_classes=num_classes)
