"""Loading a trained model for evaluation, and saying which model it is.

A checkpoint carries its own architecture (`model_spec`), which is what evaluation builds. When it
differs from the config's `model:` section (e.g. a demo checkpoint evaluated under the paper
preset) evaluation goes ahead with the checkpoint's architecture, logs a warning and records the
differences in the report ("model" entry). A checkpoint trained for another data set (other class
count, or another `model_spec.dataset`) is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from lc.data import NUM_CLASSES
from lc.models.mc import ModelCascade
from lc.models.variants import VARIANTS
from lc.training.checkpoint import CheckpointError, load_model

__all__ = ["ARCHITECTURE_KEYS", "checkpoint_meta", "load_evaluation_model", "load_for_evaluation",
           "model_variant", "routes_at_eval", "training_split"]

log = logging.getLogger(__name__)

# The `model:` keys that shape the network (freeze_bn and pretrained only matter in training).
ARCHITECTURE_KEYS = ("width_mult", "block_counts", "output_stride", "stem_padding", "head_channels",
                     "head_kernel")
# Where the training split of a run may be recorded (train_done.json or the checkpoint itself).
_SPLIT_KEYS = ("split", "train_split")


def model_variant(model: nn.Module) -> str:
    return "mc" if isinstance(model, ModelCascade) else str(getattr(model, "variant", type(model).__name__))


def routes_at_eval(variant: str) -> bool:
    """Whether a variant's evaluation depends on rho (unknown variants: assumed so)."""
    entry = VARIANTS.get(variant)
    return True if entry is None else entry.routed_at_eval


def checkpoint_meta(checkpoint: str | Path) -> dict:
    """The checkpoint's entries other than weights and optimizer state (model_spec, config, ...).

    Memory-mapped, so the tensors are not read; call after `load_model` has validated the file.
    """
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return {k: v for k, v in payload.items() if k in ("model_spec", "config", "iteration", *_SPLIT_KEYS)}


def training_split(checkpoint: str | Path, meta: Mapping | None = None) -> tuple[str | None, str]:
    """(the split that trained the checkpoint, where that was read) from the run's train_done.json or
    the checkpoint; (None, reason) when neither records it."""
    done = Path(checkpoint).with_name("train_done.json")
    if done.is_file():
        try:
            record = json.loads(done.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{done} is not readable JSON ({exc}); rerun the training that wrote "
                                  "it") from exc
        for key in _SPLIT_KEYS:
            if isinstance(record, dict) and record.get(key):
                return str(record[key]), f"{done} ({key})"
    meta = checkpoint_meta(checkpoint) if meta is None else meta
    for key in _SPLIT_KEYS:
        if meta.get(key):
            return str(meta[key]), f"{checkpoint} ({key})"
    return None, f"not recorded in {done} or {checkpoint}"


def _differences(spec_model: Mapping, cfg_model: Mapping) -> dict:
    out = {}
    for key in ARCHITECTURE_KEYS:
        ours, theirs = spec_model.get(key), cfg_model.get(key)
        if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
            ours, theirs = list(ours), list(theirs)
        if ours != theirs and theirs is not None:
            out[key] = {"checkpoint": ours, "config": theirs}
    return out


def _check_dataset(checkpoint: Path, spec: Mapping, dataset: str) -> None:
    expected = NUM_CLASSES[dataset]
    if int(spec.get("num_classes", expected)) != expected:
        raise ValueError(f"checkpoint {checkpoint} predicts {spec['num_classes']} classes but {dataset} has "
                         f"{expected}; pass the checkpoint trained on {dataset} (runs/{dataset}/<variant>/)")
    if spec.get("dataset") not in (None, dataset):
        raise ValueError(f"checkpoint {checkpoint} was trained on {spec['dataset']}, not {dataset}; pass the "
                         f"checkpoint trained on {dataset} (runs/{dataset}/<variant>/)")


def load_for_evaluation(cfg: Mapping | None, checkpoint: str | Path, dataset: str,
                        device: torch.device) -> tuple[nn.Module, dict]:
    """(the trained model of `checkpoint` in eval mode on `device`, its "model" report entry).

    Refuses a checkpoint trained for another data set. The entry names the architecture used (the
    checkpoint's model_spec), the preset it was trained under (if recorded), and any difference from
    the config's `model:` section, which is also logged as a warning.
    """
    checkpoint = Path(checkpoint)
    model = load_model(checkpoint, map_location=device)
    meta = checkpoint_meta(checkpoint)
    spec = meta["model_spec"]
    _check_dataset(checkpoint, spec, dataset)
    spec_model = dict(spec.get("model_cfg", {}))
    differences = _differences(spec_model, (cfg or {}).get("model", {}))
    trained_preset = (meta.get("config") or {}).get("preset")
    info = {"source": "checkpoint model_spec", "checkpoint": str(checkpoint), "variant": spec.get("variant"),
            "trained_preset": trained_preset, "trained_rho": spec.get("rho"),
            "architecture": {k: spec_model.get(k) for k in ARCHITECTURE_KEYS},
            "matches_config": not differences, "differences_from_config": differences}
    if differences:
        shown = ", ".join(f"model.{k}: {v['checkpoint']} (config {v['config']})"
                          for k, v in differences.items())
        log.warning("%s was trained with another architecture than the config's (preset %s) model: %s; "
                    "evaluating the checkpoint's own architecture (trained under preset %s)",
                    checkpoint, (cfg or {}).get("preset"), shown, trained_preset or "unrecorded")
    else:
        log.info("evaluating %s (%s, architecture as in the config)", checkpoint, spec.get("variant"))
    return model, info


def load_evaluation_model(checkpoint: str | Path, dataset: str, device: torch.device) -> nn.Module:
    """The trained model of `checkpoint` in eval mode on `device`; refuses one trained for other classes."""
    return load_for_evaluation(None, checkpoint, dataset, device)[0]
