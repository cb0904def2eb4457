"""IRNet: Inception-ResNet-v2 with a configurable output stride, width and depth.

Module names follow timm's `inception_resnet_v2` so that its state dict loads tensor for tensor
(`lc.models.timm_weights.load_timm_weights`). Differences from timm, all configurable and off at
timm's settings:
- `output_stride` 8 or 16: the reductions (mixed_6a, mixed_7a) run at stride 1 and every later
  conv is dilated (2 after one skipped reduction, 4 after two), as in DeepLab;
- `stem_padding="same"` pads every layer timm leaves unpadded, so 512 -> 64 exactly at stride 8;
- `width_mult` scales every channel count and `block_counts` sets the Block35/17/8 repeats.
The network is cut into the three stages of the Layer Cascade paper (`STAGE_LAYERS`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

BN_EPS = 1e-3

# Stage 1, 2, 3 of IRNet-LC (the paper's numbers) is this run of top-level modules (see PAPER.md,
# "Backbone").
STAGE_LAYERS: dict[int, tuple[str, ...]] = {
    1: ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "maxpool_5a",
        "mixed_5b", "repeat"),
    2: ("mixed_6a", "repeat_1"),
    3: ("mixed_7a", "repeat_2", "block8", "conv2d_7b"),
}


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class ConvBN(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; state-dict names `conv`, `bn` as in timm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fused_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv weight and bias with the (frozen, eval-mode) BatchNorm folded in; differentiable.
        After `fold_batchnorm` (BN an Identity, the conv biased) the conv's own weight and bias."""
        if isinstance(self.bn, nn.Identity):
            return self.conv.weight, self.conv.bias
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        weight = self.conv.weight * scale.view(-1, 1, 1, 1)
        bias = self.bn.bias - self.bn.running_mean * scale
        return weight, bias


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every `ConvBN`'s BatchNorm into its conv, in place (inference only: the running
    statistics become the conv's weight and bias, the BN an Identity); returns `model`.

    Benchmarks time networks this way ("at their best"); the region plan reads the folded conv."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ConvBN) and not isinstance(m.bn, nn.Identity):
                weight, bias = m.fused_weight_bias()
                c = m.conv
                conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                                 c.dilation, bias=True).to(weight.device, weight.dtype)
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)
                m.conv, m.bn = conv, nn.Identity()
    return model


class _Layout:
    """Channel widths and the padding rule shared by every block of one network."""

    def __init__(self, width_mult: float, same_padding: bool):
        self.width_mult = width_mult
        self.same_padding = same_padding

    def ch(self, channels: int) -> int:
        return max(1, int(round(channels * self.width_mult)))

    def pad(self, kernel_size, dilation: int = 1) -> tuple[int, int]:
        """Padding for a layer that timm leaves unpadded: 0 (valid) or centred (same)."""
        if not self.same_padding:
            return (0, 0)
        kh, kw = _pair(kernel_size)
        return ((kh - 1) // 2 * dilation, (kw - 1) // 2 * dilation)


class Mixed_5b(nn.Module):
    def __init__(self, lay: _Layout, in_ch: int):
        super().__init__()
        c = lay.ch
        self.branch0 = ConvBN(in_ch, c(96), 1)
        self.branch1 = nn.Sequential(ConvBN(in_ch, c(48), 1), ConvBN(c(48), c(64), 5, padding=2))
        self.branch2 = nn.Sequential(ConvBN(in_ch, c(64), 1), ConvBN(c(64), c(96), 3, padding=1),
                                     ConvBN(c(96), c(96), 3, padding=1))
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                                     ConvBN(in_ch, c(64), 1))
        self.out_channels = c(96) + c(64) + c(96) + c(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class Block35(nn.Module):
    """Inception-ResNet-A."""

    def __init__(self, lay: _Layout, channels: int, scale: float = 0.17, dilation: int = 1):
        super().__init__()
        c, d = lay.ch, dilation
        self.scale = scale
        self.branch0 = ConvBN(channels, c(32), 1)
        self.branch1 = nn.Sequential(ConvBN(channels, c(32), 1),
                                     ConvBN(c(32), c(32), 3, padding=d, dilation=d))
        self.branch2 = nn.Sequential(ConvBN(channels, c(32), 1),
                                     ConvBN(c(32), c(48), 3, padding=d, dilation=d),
                                     ConvBN(c(48), c(64), 3, padding=d, dilation=d))
        self.conv2d = nn.Conv2d(c(32) + c(32) + c(64), channels, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1))
        return self.act(out * self.scale + x)


class Mixed_6a(nn.Module):
    """Reduction-A; at stride 1 when the output stride is 8."""

    def __init__(self, lay: _Layout, in_ch: int, stride: int, dilation: int = 1):
        super().__init__()
        c, d = lay.ch, dilation
        red_pad = lay.pad(3, d) if stride == 2 else (d, d)
        self.branch0 = ConvBN(in_ch, c(384), 3, stride=stride, padding=red_pad, dilation=d)
        self.branch1 = nn.Sequential(ConvBN(in_ch, c(256), 1),
                                     ConvBN(c(256), c(256), 3, padding=d, dilation=d),
                                     ConvBN(c(256), c(384), 3, stride=stride, padding=red_pad, dilation=d))
        self.branch2 = nn.MaxPool2d(3, stride=stride, padding=red_pad[0] if stride == 2 else 1)
        self.out_channels = c(384) + c(384) + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Block17(nn.Module):
    """Inception-ResNet-B."""

    def __init__(self, lay: _Layout, channels: int, scale: float = 0.10, dilation: int = 1):
        super().__init__()
        c, d = lay.ch, dilation
        self.scale = scale
        self.branch0 = ConvBN(channels, c(192), 1)
        self.branch1 = nn.Sequential(ConvBN(channels, c(128), 1),
                                     ConvBN(c(128), c(160), (1, 7), padding=(0, 3 * d), dilation=d),
                                     ConvBN(c(160), c(192), (7, 1), padding=(3 * d, 0), dilation=d))
        self.conv2d = nn.Conv2d(c(192) + c(192), channels, 1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x)), 1))
        return self.act(out * self.scale + x)


class Mixed_7a(nn.Module):
    """Reduction-B; at stride 1 when the output stride is 8 or 16."""

    def __init__(self, lay: _Layout, in_ch: int, stride: int, dilation: int = 1):
        super().__init__()
        c, d = lay.ch, dilation
        red_pad = lay.pad(3, d) if stride == 2 else (d, d)
        self.branch0 = nn.Sequential(ConvBN(in_ch, c(256), 1),
                                     ConvBN(c(256), c(384), 3, stride=stride, padding=red_pad, dilation=d))
        self.branch1 = nn.Sequential(ConvBN(in_ch, c(256), 1),
                                     ConvBN(c(256), c(288), 3, stride=stride, padding=red_pad, dilation=d))
        self.branch2 = nn.Sequential(ConvBN(in_ch, c(256), 1),
                                     ConvBN(c(256), c(288), 3, padding=d, dilation=d),
                                     ConvBN(c(288), c(320), 3, stride=stride, padding=red_pad, dilation=d))
        self.branch3 = nn.MaxPool2d(3, stride=stride, padding=red_pad[0] if stride == 2 else 1)
        self.out_channels = c(384) + c(288) + c(320) + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class Block8(nn.Module):
    """Inception-ResNet-C."""

    def __init__(self, lay: _Layout, channels: int, scale: float = 0.20, no_relu: bool = False,
                 dilation: int = 1):
        super().__init__()
        c, d = lay.ch, dilation
        self.scale = scale
        self.branch0 = ConvBN(channels, c(192), 1)
        self.branch1 = nn.Sequential(ConvBN(channels, c(192), 1),
                                     ConvBN(c(192), c(224), (1, 3), padding=(0, d), dilation=d),
                                     ConvBN(c(224), c(256), (3, 1), padding=(d, 0), dilation=d))
        self.conv2d = nn.Conv2d(c(192) + c(256), channels, 1)
        self.relu = None if no_relu else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x)), 1)) * self.scale + x
        return out if self.relu is None else self.relu(out)


class IRNet(nn.Module):
    """Inception-ResNet-v2 trunk (no classifier); `forward` returns the last stage's features."""

    def __init__(
        self,
        width_mult: float = 1.0,
        block_counts: Sequence[int] = (10, 20, 10),
        output_stride: int = 8,
        stem_padding: str = "same",
        in_chans: int = 3,
    ):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if stem_padding not in ("same", "valid"):
            raise ValueError(f"stem_padding must be 'same' or 'valid', got {stem_padding!r}")
        if len(block_counts) != 3 or min(block_counts) < 1:
            raise ValueError(f"block_counts needs three counts >= 1, got {list(block_counts)}")
        lay = _Layout(width_mult, stem_padding == "same")
        c = lay.ch
        self.output_stride = output_stride
        self.block_counts = tuple(int(n) for n in block_counts)
        self.width_mult = width_mult

        self.conv2d_1a = ConvBN(in_chans, c(32), 3, stride=2, padding=lay.pad(3))
        self.conv2d_2a = ConvBN(c(32), c(32), 3, padding=lay.pad(3))
        self.conv2d_2b = ConvBN(c(32), c(64), 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2, padding=lay.pad(3)[0])
        self.conv2d_3b = ConvBN(c(64), c(80), 1)
        self.conv2d_4a = ConvBN(c(80), c(192), 3, padding=lay.pad(3))
        self.maxpool_5a = nn.MaxPool2d(3, stride=2, padding=lay.pad(3)[0])
        self.mixed_5b = Mixed_5b(lay, c(192))
        ch1 = self.mixed_5b.out_channels
        self.repeat = nn.Sequential(*[Block35(lay, ch1) for _ in range(self.block_counts[0])])

        # reductions: stride 2 until the output stride is reached, then stride 1 and dilate
        stride6 = 2 if output_stride >= 16 else 1
        dil6 = 1
        dil_after6 = dil6 * (2 if stride6 == 1 else 1)
        self.mixed_6a = Mixed_6a(lay, ch1, stride=stride6, dilation=dil6)
        ch2 = self.mixed_6a.out_channels
        self.repeat_1 = nn.Sequential(*[Block17(lay, ch2, dilation=dil_after6)
                                        for _ in range(self.block_counts[1])])
        stride7 = 2 if output_stride >= 32 else 1
        dil_after7 = dil_after6 * (2 if stride7 == 1 else 1)
        self.mixed_7a = Mixed_7a(lay, ch2, stride=stride7, dilation=dil_after6)
        ch3 = self.mixed_7a.out_channels
        self.repeat_2 = nn.Sequential(*[Block8(lay, ch3, dilation=dil_after7)
                                        for _ in range(self.block_counts[2] - 1)])
        self.block8 = Block8(lay, ch3, scale=1.0, no_relu=True, dilation=dil_after7)  # as timm
        self.conv2d_7b = ConvBN(ch3, c(1536), 1)
        self.stage_channels: tuple[int, int, int] = (ch1, ch2, c(1536))  # of stages 1, 2, 3

    def forward_stage(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """Run stage 1, 2 or 3 (the paper's numbers) densely."""
        for name in STAGE_LAYERS[stage]:
            x = getattr(self, name)(x)
        return x

    def stage_modules(self, stage: int) -> list[tuple[str, nn.Module]]:
        """(name, module) of stage 1, 2 or 3 in forward order."""
        return [(name, getattr(self, name)) for name in STAGE_LAYERS[stage]]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in STAGE_LAYERS:
            x = self.forward_stage(stage, x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features after conv2d_7b: timm's `forward_features` at its own settings."""
        return self.forward_stages(x)[-1]


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm in eval mode with frozen affine parameters (call after .train())."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
