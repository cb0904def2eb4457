"""Per-stage wall time of a cascade's forward passes during evaluation (`StageTimer`)."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn

from lc.models.cascade import LayerCascade
from lc.models.mc import ModelCascade

__all__ = ["StageTimer"]


class StageTimer:
    """Wall time per stage of a cascade's forward passes, summed over the passes it saw.

    It wraps the per-stage calls of the model instance while active (`with timer:`): for a
    LayerCascade the end of each stage's head (stage k = from the end of head k-1, or the start of
    the forward, to the end of head k, routing included); for a ModelCascade each member's
    forward. On CUDA it records events (no synchronisation inside the forward), on the CPU reads
    the clock. `available` is False for models of another kind.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, torch.device(device)
        if isinstance(model, ModelCascade):
            self._target = "_member_logits"
        elif isinstance(model, LayerCascade):
            self._target = "_run_head"
        else:
            self._target = None
        self.seconds = np.zeros(3)
        self._marks: list[tuple[int | None, object]] = []

    @property
    def available(self) -> bool:
        return self._target is not None and hasattr(self.model, self._target)

    def _mark(self, stage: int | None) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append((stage, event))
        else:
            self._marks.append((stage, time.perf_counter()))

    def begin(self) -> None:
        """Call right before a forward: the start of stage 1 (LayerCascade)."""
        self._marks = []
        self._mark(None)

    def collect(self) -> None:
        """Call after a forward: add each stage's time to `seconds`."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        for (_, before), (stage, after) in zip(self._marks, self._marks[1:], strict=False):
            if stage is None:
                continue  # a "begin" mark: the time before it belongs to no stage
            if self.device.type == "cuda":
                self.seconds[stage] += before.elapsed_time(after) / 1000.0
            else:
                self.seconds[stage] += after - before
        self._marks = []

    def __enter__(self) -> StageTimer:
        if not self.available:
            return self
        original = getattr(self.model, self._target)
        if self._target == "_run_head":
            def timed(stage: int, *args, **kwargs):
                result = original(stage, *args, **kwargs)
                self._mark(stage - 1)
                return result
        else:
            def timed(k: int, *args, **kwargs):
                self._mark(None)
                result = original(k, *args, **kwargs)
                self._mark(k)
                return result
        setattr(self.model, self._target, timed)  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        if self.available and self._target in vars(self.model):
            delattr(self.model, self._target)
