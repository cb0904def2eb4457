"""CUDA-graph replay of the planned region stages, one graph per (plan, row bucket, input shape).

A graph captures the whole planned stage, neighbour tables included: its static inputs are the
stage's mask, the stage input (dense (B, C, H, W), or the previous stage's (R2, C) rows padded to
that stage's bucket) and, for stage 3, the previous stage's mask. A call copies those in, replays
and returns the static output; tables are rebuilt inside the graph from the mask (no host work,
no sync: the bucket R is part of the key). A key is captured at its `CAPTURE_AT_USE`-th use
(`lc.models.graph_cache`; warm-up: two eager runs on a side stream, then the capture); before
that the stage runs eagerly at the same bucket (the same numbers), so a shape met once
(evaluation's images of every size, scales and flips) never pays a capture, while a benchmark's
repeated shape is graphed from its second call. `graphs=True` on `run_stage_compressed` captures
at first use. Each graph has its own memory pool (they replay in any order, so sharing one would
be unsafe). Inference only (no autograd); on CPU, or with the switch off
(`region.cuda_graphs: false`), the eager path runs.

The graphs of a stage live on its `StagePlan` (`plan.graphs`, a `GraphCache`), whose packed
weights they read: a plan rebuilt (new weights, dtype, TF32 flags) starts with no graph, the old
plan's are dropped with it (`stage_plan` clears them), and a graph never outlives the weights it
replays. At most `MAX_GRAPHS_PER_PLAN` per plan, the least recently used dropped first: stage 3's
key holds two buckets.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from lc.models.region_plan import StagePlan, run_planned, stage_rows, stage_tables
from lc.ops.region_tables import RegionTables

__all__ = ["GraphedCall", "clear_graphs", "graphed_stage"]
_with_graphs: weakref.WeakSet[StagePlan] = weakref.WeakSet()


def clear_graphs() -> None:
    """Drop every captured graph (each holds its static buffers and memory pool)."""
    for plan in list(_with_graphs):
        plan.graphs.clear()


class GraphedCall:
    """fn(*static) captured in a CUDA graph (after two warm-up runs); a call copies inputs in, replays."""

    def __init__(self, fn: Callable, static: list[torch.Tensor]):
        self.static = static
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad():
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn(*static)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.current_stream()
            try:
                with torch.cuda.graph(self.graph):  # a private pool: graphs replay in any order
                    self.out = fn(*static)
            except BaseException:
                # a failed capture_end leaves the capture stream current: every later CUDA call
                # would fail too (the GPU check's other sections included)
                torch.cuda.set_stream(stream)
                raise

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        for buffer, value in zip(self.static, inputs, strict=True):
            buffer.copy_(value)
        self.graph.replay()
        return self.out


def graphed_stage(plan: StagePlan, x: torch.Tensor, mask: torch.Tensor, num_rows: int,
                  source_mask: torch.Tensor | None = None, source_rows: int | None = None,
                  capture_now: bool = False) -> torch.Tensor | None:
    """The planned stage replayed from its graph -> the static (num_rows, C_out) output, or None
    while its key runs eagerly (before its `CAPTURE_AT_USE`-th use; `capture_now` captures at once).

    x: dense (B, C, H, W), or (source_rows, C) rows of the previous stage's bucket. The returned
    tensor is overwritten by the next replay of the same key: copy it to keep it.
    """
    # inference mode is in the key: statics made under it cannot be written outside it
    key = (int(num_rows), tuple(x.shape), x.dtype, tuple(mask.shape), source_rows,
           torch.is_inference_mode_enabled())

    def capture() -> GraphedCall:
        def fn(static_mask, static_x, *static_source):
            source = RegionTables(static_source[0], source_rows) if static_source else None
            tables = stage_tables(plan, static_mask, num_rows, num_rows, source)
            return run_planned(plan, stage_rows(static_x, source, plan.dtype), tables)

        static = [mask.clone(), x.clone()] + ([source_mask.clone()] if source_mask is not None else [])
        _with_graphs.add(plan)
        return GraphedCall(fn, static)

    graphed = plan.graphs.lookup(key, capture, now=capture_now)
    if graphed is None:
        return None
    inputs = [mask, x] + ([source_mask] if source_mask is not None else [])
    return graphed(*inputs)
