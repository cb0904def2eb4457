"""The backbone interface of the Layer Cascade: what a network must say to be cut into three stages.

A backbone is an `nn.Module` whose parameters live under its own (timm) module names and which says
- its three stages (`STAGE_LAYERS`: stage -> names of top-level modules or `layerN.i` blocks, in
  forward order; stage 1 sees every pixel, stages 2 and 3 may run on a region);
- the channels at each stage output (`stage_channels`, for the stage heads);
- how its ImageNet weights load (`load_imagenet`, a timm-layout state dict; `timm_model`,
  `weights_file`: which checkpoint `lc weights` fetches);
- how each of its block types runs on a region (`REGION_PLANS`: block type -> its region plan, the
  convs that are GEMMs, those that gather, what is folded and fused), through two entry points:
  `run_stage_region(stage, x, active, source)` (features of the active pixels only, an
  (N_active, C) matrix) and `run_stage_masked_dense(stage, x, mask)` (the definition: the stage run
  densely with every conv and block output multiplied by the mask; the tests' ground truth).
The cascade, the routing, losses, training, evaluation and benchmarks use only this interface.
Blocks with global statistics (SE, GRN) cannot run on a region: a backbone picks cut points or
variants without them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
import torch.nn as nn

from lc.models.irnet import fold_batchnorm as fold_convbn
from lc.models.irnet import freeze_batchnorm  # noqa: F401 - the one definition, re-exported
from lc.models.timm_weights import load_checked
from lc.ops.active_set import ActiveSet

__all__ = ["REGION_STAGES", "Backbone", "check_region_stage", "check_region_modules", "freeze_batchnorm",
           "resolve_module"]

REGION_STAGES = (2, 3)  # the stages that can run on a region; stage 1 always sees every pixel


def check_region_stage(stage: int) -> None:
    if stage not in REGION_STAGES:
        raise ValueError(f"region execution covers stages 2 and 3, got stage {stage}; "
                         "stage 1 always sees every pixel")


def resolve_module(root: nn.Module, name: str) -> nn.Module:
    """`root.a.b.3` for the dotted name "a.b.3" (Sequential children by index)."""
    module = root
    for part in name.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def conv_output_size(height: int, width: int, layers) -> tuple[int, int]:
    """(h, w) after the strided layers (convs or pools, in order) of a network's stem."""
    size = [height, width]
    for layer in layers:
        for i in range(2):
            k, s, p, d = (_pair(getattr(layer, a))[i]
                          for a in ("kernel_size", "stride", "padding", "dilation"))
            size[i] = (size[i] + 2 * p - d * (k - 1) - 1) // s + 1
    return size[0], size[1]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def check_region_modules(modules: list[tuple[str, nn.Module]], hint: str) -> None:
    """Raise unless every BatchNorm is in eval mode and every conv/pool has stride 1."""
    for name, module in modules:
        for sub_name, sub in module.named_modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
                raise RuntimeError(f"region execution needs eval-mode (frozen) BatchNorm, but "
                                   f"{name}.{sub_name} is in training mode; call "
                                   f"lc.models.backbone.freeze_batchnorm(model) after .train()")
            if isinstance(sub, (nn.Conv2d, nn.MaxPool2d)) and sub.stride not in (1, (1, 1)):
                raise ValueError(f"{name}.{sub_name} has stride {sub.stride}: region execution "
                                 f"needs {hint}")


def load_matching(module: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str,
                  hint: str) -> dict[str, list[str]]:
    """Load the tensors of a timm checkpoint whose names `module` has (the rest is skipped: the
    classifier, blocks or stages it lacks); every tensor of `module` must be found, with its shape."""
    return load_checked(module, state_dict, [], f"the ImageNet checkpoint does not fit {arch}", hint,
                        skip_unknown=True)


class Backbone(nn.Module, ABC):
    """Base class of the cascade's backbones (see the module docstring); subclasses fill it in."""

    name: str = ""
    STAGE_LAYERS: dict[int, tuple[str, ...]] = {}
    REGION_PLANS: dict[str, str] = {}  # block type (class name) -> its region plan
    stage_channels: tuple[int, int, int]
    in_channels: int = 3

    @classmethod
    @abstractmethod
    def from_config(cls, model_cfg: Mapping) -> Backbone:
        """Implemented by each backbone."""

    def _set_checkpoint_names(self, arch: str, timm_model: str | None, weights_file: str | None) -> None:
        """timm's architecture, its hub model (default: arch) and weights file (default: <arch>.pth)."""
        self.arch = arch
        self.timm_model = timm_model or arch
        self.weights_file = weights_file or f"{arch}.pth"

    # --- stages -------------------------------------------------------------------------------
    def stage_modules(self, stage: int) -> list[tuple[str, nn.Module]]:
        """(name, module) of stage 1, 2 or 3 in forward order."""
        return [(name, resolve_module(self, name)) for name in self.STAGE_LAYERS[stage]]

    def forward_stage(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        """Run stage 1, 2 or 3 densely."""
        for _, module in self.stage_modules(stage):
            x = module(x)
        return x

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in (1, 2, 3):
            x = self.forward_stage(stage, x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def drop_stages(self, depth: int) -> None:
        """Delete the modules of stages after `depth` (a truncated trunk: a Model Cascade member)."""
        for stage in range(depth + 1, 4):
            for name in self.STAGE_LAYERS[stage]:
                parent, _, leaf = name.rpartition(".")
                owner = resolve_module(self, parent) if parent else self
                if isinstance(owner, nn.Sequential):
                    owner[int(leaf)] = nn.Identity()  # keeps the later indices (state-dict names)
                else:
                    delattr(owner, leaf)

    @abstractmethod
    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) of the stage maps for an image of height x width."""

    # --- region execution ---------------------------------------------------------------------
    def check_region_ready(self, stage: int) -> None:
        check_region_stage(stage)
        check_region_modules(self.stage_modules(stage), "output_stride 8 (stride-1 layers)")

    @abstractmethod
    def run_stage_region(self, stage: int, x: torch.Tensor, active: ActiveSet,
                         source: ActiveSet | None = None) -> torch.Tensor:
        """Stage 2 or 3 at the pixels of `active` -> (N_active, C_out); x dense (B, C, H, W), or with
        `source` the (M, C) matrix of the previous stage on the pixels of `source` (a superset)."""

    @abstractmethod
    def run_stage_masked_dense(self, stage: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Stage 2 or 3 run densely with every conv and block output multiplied by `mask` (B, H, W)."""

    def fold_batchnorm(self) -> Backbone:
        """Fold the BatchNorms into their convs in place, for inference at its best (the benchmarks);
        the default folds IRNet-style `ConvBN` modules and leaves a backbone without them as it is."""
        return fold_convbn(self)

    # --- weights ------------------------------------------------------------------------------
    @abstractmethod
    def load_imagenet(self, state_dict: Mapping[str, torch.Tensor],
                      model_cfg: Mapping) -> dict[str, list[str]]:
        """Load a timm-layout ImageNet state dict; fail loudly on a tensor that does not fit."""

    def region_blocks(self, stage: int) -> list[tuple[str, str]]:
        """(name, block type) of the blocks of stage 2 or 3 (a Sequential counts as its children)."""
        blocks = []
        for name, module in self.stage_modules(stage):
            children = list(module.named_children()) if isinstance(module, nn.Sequential) else [("", module)]
            blocks += [(f"{name}.{sub}".rstrip("."), type(block).__name__) for sub, block in children]
        return blocks

    def region_plan(self) -> dict[str, str]:
        """Block type -> its region plan, for every block type in stages 2 and 3."""
        plans = {}
        for stage in REGION_STAGES:
            for name, kind in self.region_blocks(stage):
                if kind not in self.REGION_PLANS:
                    raise TypeError(f"{self.name}: no region plan for {name} ({kind})")
                plans[kind] = self.REGION_PLANS[kind]
        return plans
