"""BatchNorm recalibration of a truncated ImageNet start (train.bn_recalibration_images).

timm's ImageNet IRNet has 10/20/10 blocks; ours takes 5/10/5 of them (model.block_counts,
model.timm_blocks), so Mixed-6a, Mixed-7a and conv2d_7b would keep the BN statistics of the outputs
of block 10/20/10 while reading those of block 5/10/5, and the stem, trained with valid padding,
runs "same"-padded. No ImageNet-trained 5/10/5 network exists, so before the IRNet pretraining
(BN frozen, `train.pretrain_bn: frozen`) the statistics are recomputed on training images:

- every BatchNorm in train mode (normalising with its batch statistics, as in ImageNet training)
  with `momentum=None` (PyTorch's cumulative average), over the first N images of a seeded
  permutation of the training split, augmented and cropped as in training, no gradients;
- each BN's running mean and variance are then set to the pooled mean and (unbiased) variance of
  its input over all N images (the cumulative average of the batch means is the same mean; for the
  variance the pooled value is exact where PyTorch's average of batch variances misses the spread
  between batches), and BN is frozen again (eval mode).

`run_bn_recalibration` writes the result as a checkpoint (`lc recalibrate-bn`, the workflow's rule
`recalibrate_bn`), which the IRNet pretraining takes as `--init`; without `--init` `lc train
--variant irnet` recalibrates itself. The record (`bn_recalibration`: images, split, ...) goes into
that checkpoint and every checkpoint trained from it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from lc.data import NUM_CLASSES, build_dataset
from lc.data.paths import canonical_split
from lc.models.plan_cache import invalidate_plans
from lc.models.variants import VARIANTS
from lc.training.checkpoint import build_model_from_spec, make_model_spec, save_checkpoint
from lc.training.distributed import SeededSamples
from lc.training.initialise import initialise, input_digests

__all__ = ["recalibrate_bn", "recalibrate_start", "recalibration_images", "run_bn_recalibration"]

log = logging.getLogger(__name__)
_BN = nn.modules.batchnorm._BatchNorm


def recalibration_images(cfg: dict) -> int:
    """train.bn_recalibration_images (0: off)."""
    return int(cfg["train"].get("bn_recalibration_images", 0) or 0)


def recalibrate_bn(module: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running statistics of `module` from its inputs over `batches`
    (see the module docstring); BN modes and momenta are restored. Returns the number of images."""
    layers = [m for m in module.modules() if isinstance(m, _BN)]
    sums: dict[nn.Module, list] = {}

    def hook(bn: nn.Module, inputs: tuple) -> None:
        x = inputs[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        acc = sums.setdefault(bn, [0.0, 0.0, 0])
        acc[0] = acc[0] + x.sum(dim=dims)
        acc[1] = acc[1] + (x * x).sum(dim=dims)
        acc[2] += x.numel() // x.shape[1]

    saved = [(m, m.training, m.momentum) for m in layers]
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was_training = module.training
    images = 0
    try:
        module.train()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        with torch.no_grad():
            for batch in batches:
                module(batch)
                images += int(batch.shape[0])
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
        for m, training, momentum in saved:
            m.train(training)
            m.momentum = momentum
    for m in layers:
        if m not in sums:
            continue
        total, squares, count = sums[m]
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0) * (count / max(count - 1, 1))
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
    invalidate_plans()  # the stage plans fold BN statistics: refold from the new ones
    return images


def _image_batches(cfg: dict, dataset: str, split: str, count: int, device: torch.device):
    """The first `count` images of a seeded permutation of the split (cycled if it has fewer),
    augmented as in training, in batches of train.batch_size."""
    train_set = SeededSamples(build_dataset(cfg, dataset, split, train=True), int(cfg["seed"]))
    order = np.random.default_rng(int(cfg["seed"])).permutation(len(train_set))
    keys = [(int(order[i % len(order)]), i // len(order)) for i in range(count)]
    size = int(cfg["train"]["batch_size"])
    for start in range(0, count, size):
        images = [train_set[key]["image"] for key in keys[start:start + size]]
        yield torch.stack(images).to(device)


def recalibrate_start(model: nn.Module, cfg: dict, dataset: str, split: str,
                      device: torch.device) -> dict:
    """Recalibrate the backbone of `model` (on `device`) over train.bn_recalibration_images images of
    `split`; returns the record stored in checkpoints."""
    count = recalibration_images(cfg)
    backbone = getattr(model, "backbone", model)
    images = recalibrate_bn(backbone, _image_batches(cfg, dataset, split, count, device))
    layers = sum(isinstance(m, _BN) for m in backbone.modules())
    record = {"images": images, "dataset": dataset, "split": split, "layers": layers,
              "batch_size": int(cfg["train"]["batch_size"]), "crop_size": int(cfg["train"]["crop_size"]),
              "seed": int(cfg["seed"])}
    log.info("BatchNorm recalibrated: %d layers over %d %s/%s training images (batches of %d, train mode, "
             "pooled statistics), then frozen", layers, images, dataset, split, record["batch_size"])
    return record


def run_bn_recalibration(cfg: dict, dataset: str, out: str | Path, device: torch.device | str = "cpu",
                         split: str = "train") -> dict:
    """`lc recalibrate-bn`: the IRNet pretraining's start (ImageNet weights, BN recalibrated) as a
    checkpoint at `out`, which `lc train --variant irnet --init` takes. Returns its record."""
    if recalibration_images(cfg) < 1:
        raise ValueError("train.bn_recalibration_images is 0: nothing to recalibrate (set it to the number "
                         "of training images, e.g. 1024)")
    device = torch.device(device)
    split = canonical_split(dataset, split)
    variant = VARIANTS["irnet"]
    model_cfg = dict(cfg["model"])
    model_cfg["freeze_bn"] = cfg["train"]["pretrain_bn"] == "frozen"
    spec = make_model_spec(variant.model_kind, variant.name, NUM_CLASSES[dataset], model_cfg,
                           float(cfg["train"]["rho"]), depth=3, dataset=dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg["seed"]))
        model = build_model_from_spec(spec)
    initialise(model, cfg, variant, None)
    model.to(device)
    record = recalibrate_start(model, cfg, dataset, split, device)
    payload = {"model": {k: v.cpu() for k, v in model.state_dict().items()}, "model_spec": spec,
               "config": cfg, "iteration": 0, "iterations_total": 0, "bn_recalibration": record,
               "inputs": input_digests(cfg, dataset, variant, None, split)}
    save_checkpoint(out, payload)
    return record
