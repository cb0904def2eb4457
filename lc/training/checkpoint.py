"""Checkpoints: atomic save, checked load, and rebuilding any trained model from its `model_spec`.

A training checkpoint is a dict saved with `torch.save`:
- `model`: the model's state dict; `model_spec`: what `build_model_from_spec` needs to rebuild it
  ({kind: "cascade" | "mc", variant, num_classes, model_cfg, rho, depth, dataset});
- `iteration`: completed training iterations (for mc counted over all three members);
- `optimizer`, `scaler` (mixed precision, or None), `rng` (one entry per process: torch, numpy,
  python and, when present, cuda generator states), `config` (the resolved config), `elapsed_s`;
- `mc_member`: for mc, the member the optimizer state belongs to;
- `inputs`: SHA-256 of the init checkpoint, the training list file, the training data (list, images,
  labels: lc.data.digest_cache) and the ImageNet weights the run
  started from (lc.training.initialise); `init_iterations_total` (the iterations behind the init
  checkpoint) and `iterations_total` (those plus `iteration`).

Everything in it is a tensor or a plain Python value, so it loads with `weights_only=True`.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from lc.data.io import atomic_path

__all__ = [
    "REQUIRED_KEYS", "CheckpointError", "build_model_from_spec", "capture_rng_state", "kill_point",
    "load_checkpoint", "load_model", "make_model_spec", "restore_rng_state", "save_checkpoint",
]

REQUIRED_KEYS: tuple[str, ...] = ("model", "model_spec", "iteration")
# Fault injection (tests/test_reliability_training.py): with this variable set to N, the process kills
# itself (SIGKILL) inside its Nth checkpoint write, leaving a half-written temporary file behind.
FAULT_KILL_ON_SAVE = "LC_FAULT_KILL_ON_SAVE"
# ... and with this one set to K, the training loop kills it right after iteration K's optimizer step
# (before that iteration is logged or checkpointed): kill points from the loop itself, never a timer.
FAULT_KILL_AFTER_ITERATION = "LC_FAULT_KILL_AFTER_ITERATION"
_saves_seen = 0
SPEC_KEYS: tuple[str, ...] = ("kind", "variant", "num_classes", "model_cfg", "rho", "depth", "dataset")
MODEL_KINDS = ("cascade", "mc")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or incomplete; the message names the file and the fix."""


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """torch.save `payload` to `path` atomically: a temporary file in the same folder, then os.replace.

    A reader never sees a half-written checkpoint, and a crash while saving keeps the previous one.
    """
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(dict(payload), handle)
        _fault_point(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def _fault_point(handle) -> None:
    global _saves_seen
    if not os.environ.get(FAULT_KILL_ON_SAVE):
        return
    _saves_seen += 1
    if _saves_seen == int(os.environ[FAULT_KILL_ON_SAVE]):
        handle.truncate(handle.tell() // 2)
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def kill_point(iteration: int) -> None:
    """Fault injection: SIGKILL this process after `iteration` when FAULT_KILL_AFTER_ITERATION names it."""
    value = os.environ.get(FAULT_KILL_AFTER_ITERATION)
    if value and int(value) == iteration:
        os.kill(os.getpid(), signal.SIGKILL)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = REQUIRED_KEYS) -> dict:
    """Load a checkpoint saved by `save_checkpoint`; CheckpointError if missing, corrupt or incomplete."""
    path = Path(path)
    fix = "delete it and rerun the training that writes it (`lc train ... --no-resume`)"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train the model first (`lc train`)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); {fix}") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a training "
                              f"checkpoint dict; {fix}")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing} (it was not written by `lc train`); {fix}")
    return payload


def make_model_spec(kind: str, variant: str, num_classes: int, model_cfg: Mapping, rho: float,
                    depth: int = 3, dataset: str | None = None) -> dict:
    """The `model_spec` entry of a checkpoint (plain values only)."""
    spec = {"kind": kind, "variant": variant, "num_classes": int(num_classes), "model_cfg": dict(model_cfg),
            "rho": float(rho), "depth": int(depth), "dataset": dataset}
    _check_spec(spec, "model_spec")
    return spec


def _check_spec(spec: Mapping, where: str) -> None:
    missing = [key for key in SPEC_KEYS if key not in spec]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}; expected keys {list(SPEC_KEYS)}")
    if spec["kind"] not in MODEL_KINDS:
        raise CheckpointError(f"{where}: kind must be one of {MODEL_KINDS}, got {spec['kind']!r}")


def build_model_from_spec(spec: Mapping) -> nn.Module:
    """A freshly initialised LayerCascade (kind "cascade") or ModelCascade (kind "mc") for `spec`."""
    from lc.models.cascade import LayerCascade
    from lc.models.mc import ModelCascade

    _check_spec(spec, "model_spec")
    if spec["kind"] == "mc":
        return ModelCascade(spec["num_classes"], spec["model_cfg"], rho=spec["rho"])
    return LayerCascade(spec["num_classes"], spec["variant"], spec["model_cfg"], rho=spec["rho"],
                        depth=spec["depth"])


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the trained model stored in checkpoint `path`, weights loaded, in eval mode."""
    payload = load_checkpoint(path, map_location=map_location)
    try:
        model = build_model_from_spec(payload["model_spec"])
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}; delete it and rerun `lc train`") from exc
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: the weights do not fit its model_spec ({exc}); delete "
                              "it and rerun `lc train`") from exc
    return model.to(map_location).eval()


# --- random number generator states ----------------------------------------------------------
def capture_rng_state() -> dict:
    """This process's torch, numpy, python (and cuda, when present) generator states, tensors only."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Mapping) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
