"""The GEMM floor of a region stage: the same GEMMs, and nothing else.

`record_region_ops(fn)` runs `fn` once under a dispatch mode and notes every `torch.ops.lc.*`
call it makes; `gemm_floor(calls)` turns the noted calls into a step that runs exactly their GEMMs
(one per conv: the same packed weights and biases, on inputs of the gathered shapes) with no
table, gather, epilogue, allocation of tables or op dispatch around them. Timed in the same
rounds as the stage (`lc bench op`, impl `gemm_floor`), it splits the stage's time into what the
BLAS takes at these shapes and everything else: the floor's `speedup_x_fraction` is the highest
efficiency the stage could reach with that BLAS. (Below ~100 rows a GEMM streams its weights for
few rows, so the floor itself falls under the dense convs' rate.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["GemmCall", "gemm_floor", "record_region_ops", "stage_floor"]

_CONV_OPS = ("lc.gather_conv.default", "lc.gather_conv_into.default")
_LINEAR_OPS = ("lc.gather_linear.default",)


@dataclass(frozen=True)
class GemmCall:
    """One conv's GEMM: (rows x K) @ weight (K x Cout) + bias."""

    rows: int
    weight: torch.Tensor  # (K, Cout), a view of the op's packed weight
    bias: torch.Tensor | None


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: list[GemmCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name in _CONV_OPS or name in _LINEAR_OPS:
            given = {a.name: v for a, v in zip(func._schema.arguments, args, strict=False)} | kwargs
            weight, bias = given["weight"], given.get("bias")
            if name in _CONV_OPS:  # weight (K, Cin, Cout), one row per table row
                rows, weight = given["table"].shape[0], weight.reshape(-1, weight.shape[2])
            else:  # weight (Cin, Cout), one row per source row
                rows = given["src"].shape[0]
            self.calls.append(GemmCall(rows, weight, bias))
        return func(*args, **kwargs)


def record_region_ops(fn: Callable[[], object]) -> list[GemmCall]:
    """The GEMM of every `lc::gather_conv`, `gather_conv_into` and `gather_linear` call of one `fn()`,
    run under inference_mode (the planned inference path)."""
    recorder = _Recorder()
    with torch.inference_mode(), recorder:
        fn()
    return recorder.calls


def gemm_floor(calls: list[GemmCall], seed: int = 0) -> Callable[[], None]:
    """A step running the GEMMs of `calls` in order on fixed random inputs of their shapes."""
    if not calls:
        raise ValueError("gemm_floor needs at least one recorded GEMM (was the stage run on the planned "
                         "path? `configure_region(planned=True)`)")
    gen = torch.Generator().manual_seed(seed)
    inputs: dict[tuple, torch.Tensor] = {}
    plan = []
    for call in calls:
        weight = call.weight
        key = (call.rows, weight.shape[0], weight.dtype, weight.device)
        if key not in inputs:
            inputs[key] = torch.randn(key[:2], generator=gen).to(weight.device, weight.dtype)
        plan.append((inputs[key], weight, call.bias))

    def step() -> None:
        for rows, weight, bias in plan:
            if bias is None:
                torch.mm(rows, weight)
            else:
                torch.addmm(bias, rows, weight)

    return step


def stage_floor(run_stage: Callable[[], object]) -> Callable[[], None] | None:
    """The GEMM floor of the stage `run_stage()` runs (call it eagerly: a CUDA-graph replay would
    hide its ops, a capture repeat them), or None when it calls no registered op (the per-layer
    path)."""
    calls = record_region_ops(run_stage)
    return gemm_floor(calls) if calls else None
