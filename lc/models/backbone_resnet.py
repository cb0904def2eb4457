"""ResNet (timm's own `resnet101` modules) at output stride 8 as a cascade backbone.

timm builds the network (`timm.create_model(arch, output_stride=8)`: layer3 and layer4 at stride 1,
dilated 2 and 4 as in DeepLab); we keep its modules under its names, so timm's ImageNet state dict
loads tensor for tensor. Stages (the paper's numbers):
- stage 1: stem (conv1, bn1, act1, maxpool), layer1, layer2 (output stride 8, 512 channels);
- stage 2: layer3 blocks 0 .. k-1 (k = `model.stage2_blocks`; block 0 is the projection block);
- stage 3: layer3 blocks k .. and layer4 (2048 channels).
ResNet-101 (layer3 has 23 blocks) cuts at k = 16: its dense FLOPs at 512x512 then split 5.3/42.0/52.5%
over the stages, against IRNet-LC's (5/10/5 blocks) 5.8/42.1/52.1%, so a pixel decided at stage 1 or
2 saves the same share of the network on both (README, "Backbones"). The demo uses the same code
with one bottleneck per layer and narrow channels.

Region plan of a `Bottleneck` (every block input is read only by 1x1 convs, so no block reads its
input's neighbours): conv1 1x1 GEMM, BN folded, ReLU; conv2 3x3 (dilated) gathered through the stage's
neighbour table, BN folded, ReLU; conv3 1x1 GEMM, BN folded; shortcut (1x1 projection GEMM with BN
folded, or identity); add, ReLU. In inference the folded weights are packed once per stage (a plan
cached like IRNet's, `lc.models.plan_cache.cached_for_stage`: rebuilt when weights, dtype, device
or the TF32 switches change) and each block is 3 registered-op calls (4 with the projection), bias,
ReLU and the residual add fused into them; under autograd the fold is recomputed per call (it is
part of the graph) and the block runs op by op (`bottleneck_region`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.resnet import Bottleneck
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lc.models.backbone import Backbone, check_region_stage, conv_output_size, load_matching
from lc.models.plan_cache import cached_for_stage, compute_dtype
from lc.models.region_irnet import region_options
from lc.models.region_plan import conv_geometry
from lc.ops.active_set import ActiveSet
from lc.ops.library import pack_conv_weight
from lc.ops.region_conv import compressed_conv, linear_rows

__all__ = ["ResNetBackbone", "fold_conv_bn"]

_STEM = ("conv1", "bn1", "act1", "maxpool")


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | nn.Identity) -> tuple[torch.Tensor, torch.Tensor]:
    """conv weight and bias with an eval-mode BatchNorm folded in (differentiable); after
    `ResNetBackbone.fold_batchnorm` (BN an Identity, the conv biased) the conv's own."""
    if isinstance(bn, nn.Identity):
        bias = conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
        return conv.weight, bias
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight, bias


def _check_plain(block: Bottleneck, name: str) -> None:
    for attr in ("drop_block", "aa"):
        if not isinstance(getattr(block, attr, None), (nn.Identity, type(None))):
            raise TypeError(f"{name}.{attr} is {type(getattr(block, attr)).__name__}: region execution "
                            "supports plain bottlenecks only")
    if getattr(block, "se", None) is not None:
        raise TypeError(f"{name} has squeeze-excitation, whose global statistics change under a mask; "
                        "pick a ResNet without SE")


def bottleneck_region(block: Bottleneck, rows: torch.Tensor, active: ActiveSet) -> torch.Tensor:
    """One bottleneck on the (N, Cin) rows of `active` -> (N, Cout) (see the module docstring)."""
    w1, b1 = fold_conv_bn(block.conv1, block.bn1)
    h = F.relu(linear_rows(rows, w1.flatten(1), b1))
    w2, b2 = fold_conv_bn(block.conv2, block.bn2)
    h = F.relu(compressed_conv(h, active, w2, b2, block.conv2.padding, block.conv2.dilation))
    w3, b3 = fold_conv_bn(block.conv3, block.bn3)
    out = linear_rows(h, w3.flatten(1), b3)
    if block.downsample is not None:
        wd, bd = fold_conv_bn(block.downsample[0], block.downsample[1])
        shortcut = linear_rows(rows, wd.flatten(1), bd)
    else:
        shortcut = rows
    return F.relu(out + shortcut)


@dataclass
class _PlannedBottleneck:
    """One block's folded weights in the ops' layout ((Cin, Cout) GEMMs, (9, Cin, Cout) conv2)."""

    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    geometry: tuple  # conv2's (kernel, dilation, padding)
    w3: torch.Tensor
    b3: torch.Tensor
    wd: torch.Tensor | None
    bd: torch.Tensor | None


def _packed(conv: nn.Conv2d, bn: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    weight, bias = fold_conv_bn(conv, bn)
    packed = pack_conv_weight(weight).to(dtype)
    return (packed[0] if packed.shape[0] == 1 else packed), bias.to(dtype)


def _plan_block(block: Bottleneck, dtype: torch.dtype, name: str) -> _PlannedBottleneck:
    kernel, dilation = conv_geometry(block.conv2, f"{name}.conv2")  # the other convs: check_region_ready
    proj = (None, None)
    if block.downsample is not None:
        proj = _packed(block.downsample[0], block.downsample[1], dtype)
    geometry = (kernel, dilation, block.conv2.padding)
    c1 = _packed(block.conv1, block.bn1, dtype)
    c2 = _packed(block.conv2, block.bn2, dtype)
    c3 = _packed(block.conv3, block.bn3, dtype)
    return _PlannedBottleneck(*c1, *c2, geometry, *c3, *proj)


def bottleneck_planned(p: _PlannedBottleneck, rows: torch.Tensor, active: ActiveSet) -> torch.Tensor:
    """One planned block (inference): relu(conv3(relu(conv2(relu(conv1 rows)))) + shortcut), epilogues
    fused into the registered ops."""
    h = torch.ops.lc.gather_linear(rows, p.w1, p.b1, None, 1.0, True, 0, None)
    kernel, dilation, padding = p.geometry
    table = active.neighbour_table(kernel, dilation, padding, source="active")
    h = torch.ops.lc.gather_conv(h, table, p.w2, p.b2, None, 1.0, True, 0, None, None)
    shortcut = rows
    if p.wd is not None:
        shortcut = torch.ops.lc.gather_linear(rows, p.wd, p.bd, None, 1.0, False, 0, None)
    return torch.ops.lc.gather_linear(h, p.w3, p.b3, shortcut, 1.0, True, 0, None)


def bottleneck_masked(block: Bottleneck, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The definition: the block run densely with every conv and block output multiplied by m."""
    h = m * block.act1(block.bn1(block.conv1(x)))
    h = m * block.act2(block.bn2(block.conv2(h)))
    out = m * block.bn3(block.conv3(h))
    shortcut = x if block.downsample is None else m * block.downsample(x)
    return m * block.act3(out + shortcut)


class ResNetBackbone(Backbone):
    """timm ResNet (Bottleneck) at output stride 8, cut into three stages (module docstring)."""

    name = "resnet"
    REGION_PLANS: dict[str, str] = {
        "Bottleneck": "conv1 1x1 GEMM + folded BN + ReLU; conv2 3x3 (dilated) gathered + folded BN + ReLU; "
                    "conv3 1x1 GEMM + folded BN; shortcut 1x1 projection GEMM + folded BN or identity; "
                    "add, ReLU",
    }

    def __init__(self, arch: str = "resnet101", layers: tuple[int, ...] | None = None,
                 channels: tuple[int, ...] | None = None, stem_width: int | None = None,
                 stage2_blocks: int = 16, timm_model: str | None = None, weights_file: str | None = None):
        super().__init__()
        import timm

        kwargs = {"layers": tuple(layers)} if layers else {}
        if channels:
            kwargs["channels"] = tuple(channels)
        if stem_width:
            kwargs["stem_width"] = int(stem_width)
        net = timm.create_model(arch, pretrained=False, output_stride=8, num_classes=0, **kwargs)
        for name in (*_STEM, "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        n3 = len(self.layer3)
        if not 1 <= stage2_blocks <= n3:
            raise ValueError(f"model.stage2_blocks must lie in 1..{n3} (layer3's blocks), "
                             f"got {stage2_blocks}")
        self.stage2_blocks = int(stage2_blocks)
        self.STAGE_LAYERS = {
            1: (*_STEM, "layer1", "layer2"),
            2: tuple(f"layer3.{i}" for i in range(stage2_blocks)),
            3: (*(f"layer3.{i}" for i in range(stage2_blocks, n3)), "layer4"),
        }
        self.stage_channels = (self.layer2[-1].conv3.out_channels, self.layer3[-1].conv3.out_channels,
                               self.layer4[-1].conv3.out_channels)
        self._set_checkpoint_names(arch, timm_model, weights_file)

    @classmethod
    def from_config(cls, model_cfg: Mapping) -> ResNetBackbone:
        return cls(arch=model_cfg.get("timm_arch", "resnet101"), layers=model_cfg.get("layers"),
                   channels=model_cfg.get("channels"), stem_width=model_cfg.get("stem_width"),
                   stage2_blocks=int(model_cfg.get("stage2_blocks", 16)),
                   timm_model=model_cfg.get("timm_model"), weights_file=model_cfg.get("weights_file"))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return conv_output_size(height, width, (self.conv1, self.maxpool, self.layer2[0].conv2))

    def _blocks(self, stage: int) -> list[tuple[str, Bottleneck]]:
        blocks = []
        for name, module in self.stage_modules(stage):
            if isinstance(module, nn.Sequential):
                blocks += [(f"{name}.{i}", b) for i, b in enumerate(module)]
            else:
                blocks.append((name, module))
        for name, block in blocks:
            if not isinstance(block, Bottleneck):
                raise TypeError(f"no region execution for {name} ({type(block).__name__})")
            _check_plain(block, name)
        return blocks

    def fold_batchnorm(self) -> ResNetBackbone:
        """Fold every BatchNorm into its conv in place (inference: the benchmarks' dense network at
        its best, `torch.nn.utils.fusion.fuse_conv_bn_eval`); the BNs become Identity."""
        pairs = [(self, "conv1", "bn1")]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
                if block.downsample is not None:
                    pairs.append((block.downsample, "0", "1"))
        for owner, conv, bn in pairs:
            if isinstance(getattr(owner, bn), nn.modules.batchnorm._BatchNorm):
                setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
                setattr(owner, bn, nn.Identity())
        return self

    def stage_plan(self, stage: int, dtype: torch.dtype) -> list[_PlannedBottleneck]:
        """The packed blocks of stage 2 or 3 in `dtype`, built once (checked then) and cached."""
        def build(_key) -> list[_PlannedBottleneck]:
            self.check_region_ready(stage)
            with torch.no_grad():
                return [_plan_block(block, dtype, name) for name, block in self._blocks(stage)]
        return cached_for_stage(self, stage, dtype, build)

    def run_stage_region(self, stage: int, x: torch.Tensor, active: ActiveSet,
                         source: ActiveSet | None = None) -> torch.Tensor:
        active.check_stage_input(x, source)
        rows = active.gather(x) if source is None else x.index_select(0, active.rows_in(source))
        if region_options()["planned"] and not torch.is_grad_enabled():
            dtype = compute_dtype(x)
            rows = rows.to(dtype)
            for block in self.stage_plan(stage, dtype):
                rows = bottleneck_planned(block, rows, active)
            return rows
        self.check_region_ready(stage)
        for _, block in self._blocks(stage):
            rows = bottleneck_region(block, rows, active)
        return rows

    def run_stage_masked_dense(self, stage: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_region_stage(stage)
        m = mask.detach().reshape(mask.shape[0], 1, *mask.shape[-2:]).to(x.dtype)
        for _, block in self._blocks(stage):
            x = bottleneck_masked(block, x, m)
        return x

    def load_imagenet(self, state_dict: Mapping[str, torch.Tensor],
                      model_cfg: Mapping) -> dict[str, list[str]]:
        """timm's resnet state dict; with fewer blocks per layer than the checkpoint, its first ones."""
        return load_matching(self, state_dict, self.arch, "model.layers/channels")
