"""Where a training run starts from, and the digests of its inputs that every checkpoint records.

Starting points (lc.models.variants: `init_from`; train.cascade_init for lc and dsn_dropout):
- irnet (the pretraining): ImageNet weights, model.pretrained (lc.data.weights); with
  model.pretrained null only when train.allow_scratch is true (the paper preset refuses otherwise);
  or, as `init`, the output of `lc recalibrate-bn` (the same weights, BN recalibrated: backbone only);
- dsn, dsn_dropout, lc: the checkpoint given as `init`, any three-stage LayerCascade (irnet, or the
  jointly trained dsn when train.cascade_init is dsn): the backbone and every stage head the source
  has (irnet: head 3; dsn: heads 1-3); heads it lacks start fresh. Without `init`, ImageNet weights;
- mc: every member takes from `init` the stages (and head) it has, the starting point LC gets.

A run's inputs are the init checkpoint, the training list file, the training data (the list with
every image and label it names: lc.data.digest_cache) and the ImageNet weights it loaded. Their
SHA-256 digests go into every checkpoint (`inputs`); a resume whose inputs changed since (the
pretraining was redone, the data re-prepared or edited by hand) restarts from scratch with a printed
reason instead of continuing from a state trained on something else.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn as nn

from lc.data.digest_cache import data_digest
from lc.data.paths import data_root, prepared_list_files
from lc.data.weights import load_weights_file, pretrained_file, sha256_file
from lc.models.variants import Variant
from lc.training.checkpoint import CheckpointError, load_checkpoint

__all__ = ["bn_record", "initialise", "input_digests", "stale_inputs"]

log = logging.getLogger(__name__)


def _imagenet_file(cfg: dict) -> Path | None:
    """The ImageNet checkpoint to load, or None (from scratch, only with train.allow_scratch)."""
    path = pretrained_file(cfg)
    if path is None:
        if not cfg["train"].get("allow_scratch", False):
            raise ValueError("model.pretrained is null, so IRNet would train from scratch, not from ImageNet "
                             "weights as in the paper; set model.pretrained: timm and run `lc weights`, or "
                             "set train.allow_scratch: true to train from scratch on purpose")
        return None
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained = {cfg['model']['pretrained']}: {path} does not exist; "
                                "run `lc weights` (or place a timm inception_resnet_v2 checkpoint there)")
    return path


def _load_imagenet(model: nn.Module, cfg: dict) -> None:
    path = _imagenet_file(cfg)
    if path is None:
        log.warning("model.pretrained is null and train.allow_scratch is true: training from scratch")
        return
    weights = load_weights_file(path)
    for network in getattr(model, "members", [model]):  # the Model Cascade: every member
        network.backbone.load_imagenet(weights, cfg["model"])  # lc.models.backbone interface


def _cascade_weights(init: Path) -> dict:
    payload = load_checkpoint(init)
    spec = payload["model_spec"]
    if spec.get("kind") != "cascade" or spec.get("depth") != 3:
        raise CheckpointError(f"--init {init} holds a {spec.get('kind')}/{spec.get('variant')} model of "
                              f"depth {spec.get('depth')}; the cascade variants start from a three-stage "
                              "cascade checkpoint (runs/<dataset>/irnet/ or runs/<dataset>/dsn/)")
    return payload


def _load_into(module: nn.Module, weights: dict, init: Path, what: str) -> None:
    """Load every tensor of `weights` that `module` has; all of its backbone must be there."""
    ours = module.state_dict()
    missing = [k for k in ours if k.startswith("backbone.") and k not in weights]
    misfit = [k for k in ours if k in weights and weights[k].shape != ours[k].shape]
    if missing or misfit:
        raise CheckpointError(f"--init {init} does not fit {what} (missing {missing[:5]}, shape mismatch "
                              f"{misfit[:5]}); train it with the same model settings")
    module.load_state_dict({k: v for k, v in weights.items() if k in ours}, strict=False)


def _load_recalibrated(model: nn.Module, init: Path, variant: Variant) -> None:
    """The pretraining's --init: ImageNet weights, BN recalibrated (`lc recalibrate-bn`); backbone only."""
    payload = load_checkpoint(init)
    if not payload.get("bn_recalibration") or int(payload.get("iteration", 0)):
        raise ValueError(f"the {variant.name} variant is the pretraining: it starts from model.pretrained "
                         f"(ImageNet) or `lc recalibrate-bn`'s output, not from --init {init}")
    _load_into(model, {k: v for k, v in payload["model"].items() if k.startswith("backbone.")}, init,
               f"the {variant.name} model")
    log.info("%s starts from %s: ImageNet weights, BatchNorm recalibrated over %d images", variant.name, init,
             payload["bn_recalibration"]["images"])


def bn_record(init: Path | None) -> dict | None:
    """The BN recalibration record of the start `init` (its `bn_recalibration`), or None."""
    return None if init is None else load_checkpoint(init).get("bn_recalibration")


def initialise(model: nn.Module, cfg: dict, variant: Variant, init: Path | None) -> int:
    """Starting weights of a fresh run (see the module docstring); returns the iterations behind them
    (the init checkpoint's `iterations_total`, 0 from ImageNet)."""
    if variant.init_from == "imagenet":
        if init is not None:
            _load_recalibrated(model, init, variant)
        else:
            _load_imagenet(model, cfg)
        return 0
    if init is None:
        _load_imagenet(model, cfg)
        return 0
    payload = _cascade_weights(init)
    weights = payload["model"]
    if variant.model_kind == "mc":
        for k, member in enumerate(model.members):
            _load_into(member, weights, init, f"Model Cascade member {k + 1}")
    else:
        ours = model.state_dict()
        unexpected = [k for k in weights if k not in ours]
        if unexpected:
            raise CheckpointError(f"--init {init} has tensors a {variant.name} model lacks "
                                  f"({unexpected[:5]})")
        _load_into(model, weights, init, f"the {variant.name} model")
    behind = int(payload.get("iterations_total", payload["iteration"]))
    log.info("%s starts from %s (a %s model, %d iterations behind it)", variant.name, init,
             payload["model_spec"].get("variant"), behind)
    return behind


def input_digests(cfg: dict, dataset: str, variant: Variant, init: Path | None,
                  split: str = "train") -> dict[str, str | None]:
    """SHA-256 of what this run starts from and trains on: init checkpoint, train list, the list with
    every image and label it names (lc.data.digest_cache, cached by size and mtime), ImageNet file."""
    imagenet = None
    if init is None:
        path = _imagenet_file(cfg)
        imagenet = None if path is None else sha256_file(path)
    train_list = prepared_list_files(cfg, dataset)[split]
    listed = train_list.is_file()
    return {"init": None if init is None else sha256_file(init),
            "train_list": sha256_file(train_list) if listed else None,
            "train_data": data_digest(data_root(cfg), train_list) if listed else None,
            "imagenet": imagenet}


def stale_inputs(stored: dict | None, current: dict) -> list[str]:
    """Why a checkpoint written with inputs `stored` does not belong to a run with `current` ([]: it does)."""
    if stored is None:
        return ["it records no input digests (written by an older version)"]
    names = {"init": "the --init checkpoint", "train_list": "the training list file",
             "train_data": "the training data (the list, its images and labels)",
             "imagenet": "the ImageNet weights"}
    return [f"{names[k]} changed ({(stored.get(k) or 'none')[:12]} -> {(current[k] or 'none')[:12]})"
            for k in names if stored.get(k) != current[k]]

