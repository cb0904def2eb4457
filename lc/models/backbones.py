"""The table of cascade backbones: `model.backbone` in the config names one of them.

To add a backbone: a module `lc/models/backbone_<name>.py` with a `Backbone` subclass (see
`lc.models.backbone`), one line here, and its settings under `backbones.<name>` in config.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping

from lc.models.backbone import Backbone
from lc.models.backbone_irnet import IRNetBackbone
from lc.models.backbone_resnet import ResNetBackbone

__all__ = ["BACKBONES", "build_backbone"]

BACKBONES: dict[str, type[Backbone]] = {
    "irnet": IRNetBackbone,
    "resnet": ResNetBackbone,
}


def build_backbone(model_cfg: Mapping) -> Backbone:
    """The backbone `model_cfg["backbone"]` (default irnet) built from the rest of `model_cfg`."""
    name = model_cfg.get("backbone", "irnet")
    if name not in BACKBONES:
        raise ValueError(f"model.backbone is {name!r}; known backbones: {sorted(BACKBONES)} "
                         "(config.yaml, model.backbone)")
    return BACKBONES[name].from_config(model_cfg)
