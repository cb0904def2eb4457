"""ConvNeXt V1 (timm's own `convnext_tiny` modules) at output stride 8 as a cascade backbone.

timm builds the network (`timm.create_model(arch, output_stride=8)`: stages 2 and 3 at stride 1, their
depthwise convs dilated 2 and 4; V1 has no GRN and no SE, whose global statistics would change under a
mask). Module names are timm's, so its ImageNet state dict loads tensor for tensor. Stages:
- stage 1: stem, stages.0, stages.1 and stages.2.downsample (at output stride 8 a 2x2 stride-1 conv
  with asymmetric "same" padding: kept in the dense stage, so no region stage meets that padding);
- stage 2: the blocks of stages.2, then stages.3.downsample (LayerNorm + 2x2 conv dilated 2, padding 1:
  size-preserving and symmetric, so it gathers like any other conv);
- stage 3: the blocks of stages.3.
For convnext_tiny the dense FLOPs at 512x512 split 7.9/42.0/50.1% over the stages (IRNet-LC with
5/10/5 blocks: 5.8/42.1/52.1%), with no choice to make: the cuts follow the downsamples.

Region plan of a `ConvNeXtBlock`: the 7x7 depthwise conv (dilated) gathered through the stage's
neighbour table (`lc.ops.depthwise`: torch path, Triton kernel on CUDA); LayerNorm over the channels
of the active rows; fc1 GEMM, GELU, fc2 GEMM; layer scale (gamma); + the block input's rows.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.convnext import ConvNeXtBlock

from lc.models.backbone import Backbone, check_region_stage, conv_output_size, load_matching
from lc.ops.active_set import ActiveSet
from lc.ops.depthwise import depthwise_conv
from lc.ops.region_conv import compressed_conv

__all__ = ["ConvNeXtBackbone"]


def _pointwise(block: ConvNeXtBlock, rows: torch.Tensor) -> torch.Tensor:
    """LayerNorm over channels, fc1, GELU, fc2, layer scale: on (..., C) rows (channels last)."""
    norm, mlp = block.norm, block.mlp
    h = F.layer_norm(rows, (rows.shape[-1],), norm.weight, norm.bias, norm.eps)
    h = mlp.act(F.linear(h, mlp.fc1.weight.flatten(1), mlp.fc1.bias))
    h = F.linear(h, mlp.fc2.weight.flatten(1), mlp.fc2.bias)
    return h if block.gamma is None else h * block.gamma


def _check_block(block: nn.Module, name: str) -> None:
    if not isinstance(block, ConvNeXtBlock):
        raise TypeError(f"no region execution for {name} ({type(block).__name__})")
    if not isinstance(block.shortcut, nn.Identity) or not isinstance(block.mlp.norm, nn.Identity):
        raise TypeError(f"{name}: region execution supports ConvNeXt V1 blocks (identity shortcut, no GRN)")
    if not isinstance(block.drop_path, nn.Identity) and block.training:
        raise RuntimeError(f"{name}: drop path is random per sample; region execution needs eval mode")


def _downsample_conv(ds: nn.Sequential, name: str) -> nn.Conv2d:
    conv = ds[1]
    if type(conv) is not nn.Conv2d or conv.stride not in (1, (1, 1)):
        raise ValueError(f"{name} is a {type(conv).__name__} with stride {conv.stride}: a region stage needs "
                         "a plain stride-1 conv (output_stride 8 puts the asymmetric one in stage 1)")
    return conv


class ConvNeXtBackbone(Backbone):
    """timm ConvNeXt V1 at output stride 8, cut into three stages (module docstring)."""

    name = "convnext"
    REGION_PLANS: dict[str, str] = {
        "ConvNeXtBlock": "7x7 depthwise (dilated) gathered; LayerNorm over channels on the active rows; fc1 "
                       "GEMM, GELU, fc2 GEMM; layer scale; + input rows",
        "downsample": "LayerNorm over channels on the active rows, 2x2 conv (dilation 2, "
                       "padding 1) gathered",
    }

    def __init__(self, arch: str = "convnext_tiny", depths: tuple[int, ...] | None = None,
                 dims: tuple[int, ...] | None = None, timm_model: str | None = None,
                 weights_file: str | None = None):
        super().__init__()
        import timm

        kwargs = {}
        if depths:
            kwargs["depths"] = tuple(depths)
        if dims:
            kwargs["dims"] = tuple(dims)
        net = timm.create_model(arch, pretrained=False, output_stride=8, num_classes=0, **kwargs)
        if not isinstance(net.norm_pre, nn.Identity):
            raise ValueError(f"{arch} has a norm before the head inside the trunk; not supported")
        self.stem, self.stages = net.stem, net.stages
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage.blocks):
                _check_block(block, f"stages.{i}.blocks.{j}")
        self.STAGE_LAYERS = {
            1: ("stem", "stages.0", "stages.1", "stages.2.downsample"),
            2: ("stages.2.blocks", "stages.3.downsample"),
            3: ("stages.3.blocks",),
        }
        # a block keeps its channels: stage 1 ends at stages.2's width, stages 2 and 3 at stages.3's
        self.stage_channels = (self.stages[2].blocks[0].conv_dw.in_channels,
                               self.stages[3].blocks[0].conv_dw.in_channels,
                               self.stages[3].blocks[-1].conv_dw.in_channels)
        self._set_checkpoint_names(arch, timm_model, weights_file)

    @classmethod
    def from_config(cls, model_cfg: Mapping) -> ConvNeXtBackbone:
        return cls(arch=model_cfg.get("timm_arch", "convnext_tiny"), depths=model_cfg.get("depths"),
                   dims=model_cfg.get("dims"), timm_model=model_cfg.get("timm_model"),
                   weights_file=model_cfg.get("weights_file"))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return conv_output_size(height, width, (self.stem[0], self.stages[1].downsample[1]))

    def region_blocks(self, stage: int) -> list[tuple[str, str]]:
        return [(name, "downsample" if name.endswith("downsample") else type(layer).__name__)
                for name, layer in self._layers(stage)]

    def _layers(self, stage: int) -> list[tuple[str, nn.Module]]:
        layers = []
        for name, module in self.stage_modules(stage):
            if name.endswith(".blocks"):
                layers += [(f"{name}.{i}", b) for i, b in enumerate(module)]
            else:
                layers.append((name, module))
        return layers

    def run_stage_region(self, stage: int, x: torch.Tensor, active: ActiveSet,
                         source: ActiveSet | None = None) -> torch.Tensor:
        self.check_region_ready(stage)
        active.check_stage_input(x, source)
        where: str | ActiveSet = "dense" if source is None else source
        for name, layer in self._layers(stage):
            if where == "dense":
                rows = active.gather(x)
            elif isinstance(where, ActiveSet):
                rows = x.index_select(0, active.rows_in(where))
            else:
                rows = x
            if isinstance(layer, ConvNeXtBlock):
                _check_block(layer, name)
                dw = layer.conv_dw
                h = depthwise_conv(x, active, dw.weight, dw.bias, dw.padding, dw.dilation, source=where)
                x = rows + _pointwise(layer, h)
            else:  # the downsample: LayerNorm, then a size-preserving conv
                if where != "active":
                    raise ValueError(f"{name}: a downsample must follow the stage's first block")
                conv = _downsample_conv(layer, name)
                norm = layer[0]
                h = F.layer_norm(rows, (rows.shape[1],), norm.weight, norm.bias, norm.eps)
                x = compressed_conv(h, active, conv.weight, conv.bias, conv.padding, conv.dilation)
            where = "active"
        return x if where == "active" else active.gather(x)

    def run_stage_masked_dense(self, stage: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_region_stage(stage)
        m = mask.detach().reshape(mask.shape[0], 1, *mask.shape[-2:]).to(x.dtype)
        for name, layer in self._layers(stage):
            if isinstance(layer, ConvNeXtBlock):
                h = m * layer.conv_dw(x)
                x = m * (x + _pointwise(layer, h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
            else:
                conv = _downsample_conv(layer, name)
                x = m * conv(m * layer[0](x))
        return x

    def load_imagenet(self, state_dict: Mapping[str, torch.Tensor],
                      model_cfg: Mapping) -> dict[str, list[str]]:
        """timm's convnext state dict (the head's norm and fc are skipped)."""
        return load_matching(self, state_dict, self.arch, "model.depths/dims")
