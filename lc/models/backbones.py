"""The table of cascade backbones: `model.backbone` in the config names one of them.

To add a backbone: a module `lc/models/backbone_<name>.py` with a `Backbone` subclass (see
`lc.models.backbone`), one line here, and its settings under `backbones.<name>` in config.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from lc.data.io import atomic_path, write_text_atomic
from lc.data.weights import WEIGHTS_FILENAME, sha256_file
from lc.models.backbone import Backbone
from lc.models.backbone_convnext import ConvNeXtBackbone
from lc.models.backbone_irnet import IRNetBackbone
from lc.models.backbone_resnet import ResNetBackbone
from lc.models.timm_weights import synthetic_statistics, timm_layout_state_dict

__all__ = ["BACKBONES", "build_backbone", "synthetic_imagenet_state", "write_synthetic_backbone_weights"]

BACKBONES: dict[str, type[Backbone]] = {
    "irnet": IRNetBackbone,
    "resnet": ResNetBackbone,
    "convnext": ConvNeXtBackbone,
}


def build_backbone(model_cfg: Mapping) -> Backbone:
    """The backbone `model_cfg["backbone"]` (default irnet) built from the rest of `model_cfg`."""
    name = model_cfg.get("backbone", "irnet")
    if name not in BACKBONES:
        raise ValueError(f"model.backbone is {name!r}; known backbones: {sorted(BACKBONES)} "
                         "(config.yaml, model.backbone)")
    return BACKBONES[name].from_config(model_cfg)


def synthetic_imagenet_state(model_cfg: Mapping, seed: int = 0) -> dict[str, torch.Tensor]:
    """A deterministic stand-in for the backbone's timm ImageNet checkpoint (synthetic presets): its
    key layout, random weights, non-trivial BatchNorm statistics and a 1000-class `fc`."""
    name = model_cfg.get("backbone", "irnet")
    if name == "irnet":
        return timm_layout_state_dict(float(model_cfg["width_mult"]), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_backbone(model_cfg)
    state = synthetic_statistics(net, generator)
    state["fc.weight"] = torch.randn(1000, net.stage_channels[2], generator=generator) * 0.01
    state["fc.bias"] = torch.zeros(1000)
    return state


def write_synthetic_backbone_weights(cfg: Mapping, mirror: str | Path) -> str:
    """`lc synth --backbone NAME`: the stand-in of model:'s backbone into `mirror` as
    model.weights_file, with its SHA-256 beside it (`<file>.sha256`); returns the digest."""
    filename = cfg["model"].get("weights_file", WEIGHTS_FILENAME)
    path = Path(mirror) / filename
    state = synthetic_imagenet_state(cfg["model"], seed=int(cfg["seed"]))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
    digest = sha256_file(path)
    write_text_atomic(path.with_name(path.name + ".sha256"), f"{digest}  {filename}\n")
    return digest
