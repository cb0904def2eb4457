"""IRNet (Inception-ResNet-v2) as a cascade backbone: `lc.models.irnet` plus the interface.

Its region execution delegates to `lc.models.region_irnet` (`run_stage_compressed`,
`run_stage_masked_dense`); its weights load through `lc.models.timm_weights`. Same modules, same
state-dict names as `IRNet`: checkpoints and results are unchanged by the interface.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from lc.models import region_irnet
from lc.models.backbone import Backbone
from lc.models.irnet import STAGE_LAYERS, ConvBN, IRNet, _pair
from lc.models.timm_weights import load_timm_weights
from lc.ops.active_set import ActiveSet

__all__ = ["IRNetBackbone"]


class IRNetBackbone(IRNet, Backbone):
    """IRNet with the backbone interface (see `lc.models.backbone`)."""

    name = "irnet"
    STAGE_LAYERS = STAGE_LAYERS
    REGION_PLANS: dict[str, str] = {
        "Mixed_6a": "reduction (stage input): 3x3 on the dense input gathered, 1x1 GEMM -> 3x3 gathered "
                  "-> 3x3 gathered, 3x3 max pool over the input; BN folded, ReLU; concat",
        "Mixed_7a": "reduction (stage input): three 1x1 merged in one GEMM, then 3x3 gathered chains, 3x3 "
                  "max pool over the input; BN folded, ReLU; concat",
        "Block17": "1x1 pair merged in one GEMM, 1x7 and 7x1 gathered (dilated); closing 1x1 GEMM with the "
                 "residual scale folded, + identity, ReLU",
        "Block8": "1x1 pair merged in one GEMM, 1x3 and 3x1 gathered (dilated); closing 1x1 GEMM with the "
                "residual scale folded, + identity, ReLU (none on the last block)",
        "ConvBN": "1x1 GEMM, BN folded, ReLU",
    }
    timm_model = "inception_resnet_v2.tf_in1k"
    weights_file = "inception_resnet_v2.pth"

    @classmethod
    def from_config(cls, model_cfg: Mapping) -> IRNetBackbone:
        return cls(width_mult=float(model_cfg["width_mult"]),
                   block_counts=tuple(model_cfg["block_counts"]),
                   output_stride=int(model_cfg.get("output_stride", 8)),
                   stem_padding=model_cfg.get("stem_padding", "same"))

    def drop_stages(self, depth: int) -> None:
        for stage in range(depth + 1, 4):
            for name in STAGE_LAYERS[stage]:
                delattr(self, name)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        size = [height, width]
        for _, module in self.stage_modules(1):
            layer = module.conv if isinstance(module, ConvBN) else module
            if not isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
                continue  # mixed_5b and the Block35 repeats keep the size
            for i in range(2):
                k, s, p, d = (_pair(getattr(layer, a))[i] for a in ("kernel_size", "stride", "padding",
                                                                     "dilation"))
                size[i] = (size[i] + 2 * p - d * (k - 1) - 1) // s + 1
        return size[0], size[1]

    def check_region_ready(self, stage: int) -> None:
        region_irnet.check_region_ready(self, stage)

    def run_stage_region(self, stage: int, x: torch.Tensor, active: ActiveSet,
                         source: ActiveSet | None = None) -> torch.Tensor:
        return region_irnet.run_stage_compressed(self, stage, x, active, source=source)

    def run_stage_masked_dense(self, stage: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return region_irnet.run_stage_masked_dense(self, stage, x, mask)

    def load_imagenet(self, state_dict: Mapping[str, torch.Tensor],
                      model_cfg: Mapping) -> dict[str, list[str]]:
        return load_timm_weights(self, dict(state_dict), blocks=model_cfg.get("timm_blocks", "first"))
