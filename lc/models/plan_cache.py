"""The cache of region-stage plans, for every backbone: a plan (folded, packed weights) is built once
per (weights generation, stage, dtype, device, both TF32 flags, train flag, storage of the stage's
first parameter) and rebuilt when any of them changes.

Weights change through `load_state_dict`, an optimiser step, a parameter set anew
(`conv.weight = nn.Parameter(...)`) or `.to()`: the first three bump a generation counter through
hooks; `.to()` swaps the parameters' storage, which the key sees through the stage's first
parameter (its storage pointer, kept alive by the cache so that no new storage can reuse it), so
even `.half().float()` rebuilds. Anything else (an in-place edit of a parameter) must call
`invalidate_plans()`. IRNet's `StagePlan` (`lc.models.region_plan`) and ResNet's packed
bottlenecks (`lc.models.backbone_resnet`) live here.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from lc.ops.library import uses_triton

__all__ = ["cached_for_stage", "compute_dtype", "invalidate_plans", "plan_key"]

T = TypeVar("T")

_generation = itertools.count()
_current = [next(_generation)]
_plans: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()
_hooked: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def invalidate_plans() -> None:
    """Mark every stage plan stale (call after editing weights in place outside an optimiser)."""
    _current[0] = next(_generation)


def _bump(*_args, **_kwargs) -> None:
    invalidate_plans()


register_optimizer_step_post_hook(_bump)
# any parameter registered anywhere (a model built, a parameter replaced): rare outside set-up
torch.nn.modules.module.register_module_parameter_registration_hook(_bump)


def _reference_parameter(owner: nn.Module, stage: int) -> nn.Parameter:
    return next(owner.stage_modules(stage)[0][1].parameters())


def plan_key(owner: nn.Module, stage: int, dtype: torch.dtype) -> tuple:
    """What a plan depends on: generation, stage, dtype, device, both TF32 switches, the
    network's train/eval flag (`.train()` rebuilds, and so rechecks, the plan) and the storage of
    the stage's first parameter (`.to()` swaps it)."""
    ref = _reference_parameter(owner, stage)
    device = ref.device
    return (_current[0], stage, dtype, device, torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32, owner.training, uses_triton(device), ref.data_ptr())


def cached_for_stage(owner: nn.Module, stage: int, dtype: torch.dtype, build: Callable[[tuple], T],
                     release: Callable[[T], None] | None = None) -> T:
    """`build(key)` for (owner, stage, dtype), kept while `plan_key` stays the same; a replaced plan
    is handed to `release` first (IRNet's drops its CUDA graphs, which replay its weights)."""
    if owner not in _hooked:
        owner.register_load_state_dict_post_hook(_bump)
        _hooked.add(owner)
    key = plan_key(owner, stage, dtype)
    entries = _plans.setdefault(owner, {})
    entry = entries.get((stage, dtype))
    if entry is None or entry[0] != key:
        if entry is not None and release is not None:
            release(entry[1])
        # the storage whose pointer is in the key, kept alive: a freed one's pointer could come back
        anchor = _reference_parameter(owner, stage).untyped_storage()
        entry = entries[(stage, dtype)] = (key, build(key), anchor)
    return entry[1]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a planned stage computes in: autocast's where it is on, else the input's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
