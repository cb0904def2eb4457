"""The planned region stage: IRNet stage 2 or 3 as a short list of registered-op calls.

A `StagePlan` is built once per (weights generation, stage, dtype, device, both TF32 flags): every
BatchNorm folded into its conv, weights packed (K, Cin, Cout) in the compute dtype, the 1x1 convs
that read one input merged into one GEMM (a Block17 or Block8 is then 4 convs plus the closing
1x1 split in two so that no concat is ever built), epilogues (bias, ReLU, residual scale-add)
fused into the ops. Geometry is checked when the plan is built, never per call.

Plans are cached and rebuilt on any weight, dtype, device, TF32 or train-flag change by
`lc.models.plan_cache`. Under autograd the fold is recomputed on each call (the fold is part of
the graph), the packing plan and tables are not.

Where the ops run the Triton kernels (CUDA; the interpreter in tests) the plan also fixes the
kernel's tiles: per row bucket and GEMM shape, chosen once (`lc.ops.library.gemm_tiles`) and
passed to every launch (`plan.tiles`), so no launch picks its tiles by shape.

`StageTables` holds the int32 device tables of one stage for one active set and row bucket
(`lc.ops.region_tables.RegionTables`): built once, shared by every block.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

import lc.ops.library  # noqa: F401  (registers torch.ops.lc.*)
from lc.models.backbone import check_region_modules, check_region_stage
from lc.models.graph_cache import GraphCache
from lc.models.irnet import Block8, Block17, ConvBN, IRNet, Mixed_6a, Mixed_7a
from lc.models.plan_cache import cached_for_stage
from lc.ops.library import gemm_tiles, uses_triton
from lc.ops.region_tables import RegionTables

__all__ = ["StagePlan", "StageTables", "check_region_ready", "conv_geometry", "stage_plan", "stage_rows",
           "stage_tables"]


def check_region_ready(irnet: IRNet, stage: int) -> None:
    """Raise unless `stage` (2 or 3) can run on a region: eval-mode BN, stride-1 layers."""
    check_region_stage(stage)
    check_region_modules(irnet.stage_modules(stage), "output_stride 8 (stride-1 reductions)")


# --- weights ------------------------------------------------------------------------------------
def _pack(weight: Tensor, dtype: torch.dtype) -> Tensor:
    cout, cin, kh, kw = weight.shape
    return weight.permute(2, 3, 1, 0).reshape(kh * kw, cin, cout).to(dtype).contiguous()


def conv_geometry(conv: nn.Conv2d, name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    if conv.stride != (1, 1) or conv.groups != 1 or conv.padding != (dh * (kh - 1) // 2, dw * (kw - 1) // 2) \
            or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"{name}: a planned region stage needs stride-1, size-preserving, ungrouped convs "
                         f"(output_stride 8); got {conv}")
    return (kh, kw), (dh, dw)


def _fold(cbr: ConvBN, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    weight, bias = cbr.fused_weight_bias()
    return _pack(weight, dtype), bias.to(dtype)


def _merged(cbrs: list[ConvBN], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    pairs = [cbr.fused_weight_bias() for cbr in cbrs]
    weight = torch.cat([w for w, _ in pairs])
    return _pack(weight, dtype), torch.cat([b for _, b in pairs]).to(dtype)


@dataclass
class _Conv:
    weight: Tensor  # (K, Cin, Cout)
    bias: Tensor | None
    geometry: tuple  # (kernel, dilation)


def _conv(cbr: ConvBN, dtype: torch.dtype, name: str) -> _Conv:
    return _Conv(*_fold(cbr, dtype), conv_geometry(cbr.conv, name))


def _reduction_a(m: Mixed_6a, dtype: torch.dtype, name: str) -> dict:
    pool = m.branch2
    if (pool.stride, pool.kernel_size, pool.padding) not in ((1, 3, 1), ((1, 1), (3, 3), (1, 1))):
        raise ValueError(f"{name}.branch2: a planned stage needs the stride-1 3x3 pool (output_stride 8)")
    return {"b0": _conv(m.branch0, dtype, f"{name}.branch0"),
            "heads": _Conv(*_merged([m.branch1[0]], dtype), ((1, 1), (1, 1))),
            "chains": [[_conv(c, dtype, f"{name}.branch1.{i + 1}") for i, c in enumerate(m.branch1[1:])]],
            "widths": [m.branch1[0].conv.out_channels],
            "width": m.out_channels}


def _reduction_b(m: Mixed_7a, dtype: torch.dtype, name: str) -> dict:
    seqs = (m.branch0, m.branch1, m.branch2)
    return {"b0": None,
            "heads": _Conv(*_merged([s[0] for s in seqs], dtype), ((1, 1), (1, 1))),
            "chains": [[_conv(c, dtype, f"{name}.branch{j}.{i + 1}") for i, c in enumerate(s[1:])]
                       for j, s in enumerate(seqs)],
            "widths": [s[0].conv.out_channels for s in seqs],
            "width": m.out_channels}


def _residual(m: Block17 | Block8, dtype: torch.dtype, name: str) -> dict:
    head = m.branch1[0].conv.out_channels
    width0 = m.branch0.conv.out_channels
    w_in, b_in = _merged([m.branch1[0], m.branch0], dtype)  # [branch1 head | branch0]
    closing = m.conv2d.weight.flatten(1)  # (Cout, width0 + branch1 out)
    relu = (m.act if isinstance(m, Block17) else m.relu) is not None
    return {"in": (w_in[0], b_in), "head": head,
            "a": _conv(m.branch1[1], dtype, f"{name}.branch1.1"),
            "b": _conv(m.branch1[2], dtype, f"{name}.branch1.2"),
            "c0": closing[:, :width0].t().to(dtype).contiguous(),
            "c1": closing[:, width0:].t().to(dtype).contiguous(),
            "bias": m.conv2d.bias.to(dtype), "scale": float(m.scale), "relu": relu}


def _weights(irnet: IRNet, stage: int, dtype: torch.dtype) -> list[tuple[str, dict]]:
    steps: list[tuple[str, dict]] = []
    for name, module in irnet.stage_modules(stage):
        subs = list(module) if isinstance(module, nn.Sequential) else [module]
        for i, sub in enumerate(subs):
            where = f"{name}.{i}" if isinstance(module, nn.Sequential) else name
            if isinstance(sub, Mixed_6a) and not steps:
                steps.append(("reduction", _reduction_a(sub, dtype, where)))
            elif isinstance(sub, Mixed_7a) and not steps:
                steps.append(("reduction", _reduction_b(sub, dtype, where)))
            elif isinstance(sub, (Block17, Block8)) and steps:
                steps.append(("residual", _residual(sub, dtype, where)))
            elif isinstance(sub, ConvBN) and steps and sub.conv.kernel_size == (1, 1):
                w, b = _fold(sub, dtype)
                steps.append(("pointwise", {"w": w[0], "bias": b}))
            else:
                raise TypeError(f"{where} ({type(sub).__name__}): no planned region execution here")
    return steps


class StagePlan:
    """The packed weights of one stage; `steps(training)` gives them (refolded under autograd)."""

    def __init__(self, irnet: IRNet, stage: int, dtype: torch.dtype, key: tuple):
        check_region_ready(irnet, stage)
        self.irnet_ref = weakref.ref(irnet)
        self.stage, self.dtype, self.key = stage, dtype, key
        self._steps: list[tuple[str, dict]] | None = None  # folded when first run without autograd
        convs = [m for _, top in irnet.stage_modules(stage) for m in top.modules()
                 if isinstance(m, nn.Conv2d)]
        self.geometries = sorted({(tuple(c.kernel_size), tuple(c.dilation)) for c in convs
                                  if tuple(c.kernel_size) != (1, 1)})
        first = irnet.stage_modules(stage)[0][1]
        self.input_geometry = ((tuple(first.branch0.conv.kernel_size), tuple(first.branch0.conv.dilation))
                               if isinstance(first, Mixed_6a) else None)
        # Triton tiles: row bucket -> {(Cin, Cout): [BLOCK_N, BLOCK_CO, BLOCK_CI]}; None off Triton
        self.device = key[3]
        self.tiles: dict[int, dict[tuple[int, int], list[int]]] | None = (
            {} if uses_triton(self.device) else None)
        self.graphs = GraphCache()  # CUDA graphs of this plan (`lc.models.region_graphs`)

    def bucket_tiles(self, num_rows: int) -> dict[tuple[int, int], list[int]] | None:
        """The tiles of every GEMM of the stage at `num_rows` rows, fixed on first use (None off Triton)."""
        if self.tiles is None:
            return None
        fixed = self.tiles.setdefault(num_rows, {})
        if not fixed and not torch.is_grad_enabled():  # every GEMM of the folded stage
            for weight in _gemm_weights(self.steps()):
                shape = tuple(weight.shape[-2:])
                fixed.setdefault(shape, gemm_tiles(num_rows, *shape, self.dtype, self.device))
        return fixed

    def steps(self) -> list[tuple[str, dict]]:
        if torch.is_grad_enabled():  # the fold is part of the autograd graph
            return _weights(self.irnet_ref(), self.stage, self.dtype)
        if self._steps is None:
            self._steps = _weights(self.irnet_ref(), self.stage, self.dtype)
        return self._steps


def _gemm_weights(obj):
    """Every GEMM weight ((K,) Cin, Cout) in a plan's steps."""
    if isinstance(obj, _Conv):
        yield obj.weight
    elif isinstance(obj, Tensor):
        if obj.dim() >= 2:
            yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _gemm_weights(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _gemm_weights(value)


def stage_plan(irnet: IRNet, stage: int, dtype: torch.dtype) -> StagePlan:
    """The cached plan of `stage`, rebuilt when its key changes."""
    return cached_for_stage(irnet, stage, dtype, lambda key: StagePlan(irnet, stage, dtype, key),
                            release=lambda old: old.graphs.clear())


# --- tables -------------------------------------------------------------------------------------
@dataclass
class StageTables:
    """The int32 tables of one planned stage on one active set, padded to `num_rows` rows."""

    num_rows: int
    num_active: int
    region: RegionTables
    input_one: Tensor      # (R, 1) rows of the stage input matrix
    input_taps: Tensor     # (R, 9) the reduction's dense-input 3x3 (branch0 of Mixed_6a)
    input_pool: Tensor     # (R, 9) the 3x3 max pool's windows (M + 1: -inf)
    own: dict              # geometry -> (table (R, K), transposed table (R, K) under autograd, else None)
    tiles: dict | None = None  # the plan's Triton tiles at num_rows (`StagePlan.bucket_tiles`)


def stage_tables(plan: StagePlan, mask: torch.Tensor, num_rows: int, num_active: int,
                 source: RegionTables | None = None, source_rows: int | None = None) -> StageTables:
    """Every table the plan's convs read, built on the device without a host sync."""
    region = RegionTables(mask, num_rows)
    src: str | RegionTables = "dense" if source is None else source
    own = {}
    training = torch.is_grad_enabled()  # transposed tables serve the backward only
    for kernel, dilation in plan.geometries:
        table = region.table(kernel, dilation, "active")
        own[(kernel, dilation)] = (table, torch.ops.lc.transpose_table(table, num_rows) if training else None)
    taps = (region.table(*plan.input_geometry, source=src, source_rows=source_rows)
            if plan.input_geometry is not None else None)
    return StageTables(num_rows, num_active, region,
                       region.table((1, 1), (1, 1), source=src, source_rows=source_rows), taps,
                       region.table((3, 3), (1, 1), source=src, pool=True, source_rows=source_rows), own,
                       plan.bucket_tiles(num_rows))


# --- the planned forward ------------------------------------------------------------------------
def stage_rows(x: torch.Tensor, source: object | None, dtype: torch.dtype) -> torch.Tensor:
    """The stage input as a matrix: dense (B, C, H, W) flattened NHWC, or, with a source (the
    previous stage's ActiveSet or RegionTables), its rows as they are.

    For the Triton kernels the dense input goes channels_last first (they read channels
    contiguously; a no-op when it already is); the CPU kernels read a strided view as it is."""
    if source is None:
        if uses_triton(x.device):
            x = x.to(dtype, memory_format=torch.channels_last)
        x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return x if x.dtype == dtype else x.to(dtype)


def _poison(t: Tensor, tables: StageTables, poison: bool) -> Tensor:
    """Test hook: NaN in every padded row, to prove that no real row reads one."""
    if not poison or tables.num_rows == tables.num_active:
        return t
    return t.index_fill(0, torch.arange(tables.num_active, tables.num_rows, device=t.device), float("nan"))


def _tiles(t: StageTables, weight: Tensor) -> list[int] | None:
    """The plan's tiles of a GEMM with this weight at the bucket's rows (None: not on Triton)."""
    if t.tiles is None:
        return None
    shape = tuple(weight.shape[-2:])
    tiles = t.tiles.get(shape)
    if tiles is None:  # under autograd the plan is not folded ahead: fixed at first use
        tiles = t.tiles[shape] = gemm_tiles(t.num_rows, *shape, weight.dtype, weight.device)
    return tiles


def _gconv(src: Tensor, conv: _Conv, tables: StageTables, src_col: int = 0, **epilogue) -> Tensor:
    table, transposed = tables.own[conv.geometry]
    return torch.ops.lc.gather_conv(src, table, conv.weight, conv.bias, epilogue.get("residual"),
                                    epilogue.get("scale", 1.0), epilogue.get("relu", True), src_col,
                                    transposed, _tiles(tables, conv.weight))


def _run_reduction(s: dict, rows: Tensor, t: StageTables, poison: bool) -> Tensor:
    heads = _poison(torch.ops.lc.gather_conv(rows, t.input_one, s["heads"].weight, s["heads"].bias,
                                             None, 1.0, True, 0, None, _tiles(t, s["heads"].weight)),
                    t, poison)
    if not torch.is_grad_enabled():
        return _reduction_into(s, rows, heads, t, poison)
    branches = []
    if s["b0"] is not None:
        branches.append(_poison(torch.ops.lc.gather_conv(rows, t.input_taps, s["b0"].weight, s["b0"].bias,
                                                         None, 1.0, True, 0, None, _tiles(t, s["b0"].weight)),
                                t, poison))
    col = 0
    for chain, width in zip(s["chains"], s["widths"], strict=True):
        feat, feat_col = heads, col
        for conv in chain:
            feat = _poison(_gconv(feat, conv, t, feat_col), t, poison)
            feat_col = 0
        branches.append(feat)
        col += width
    branches.append(torch.ops.lc.gather_max(rows, t.input_pool))
    return _poison(torch.cat(branches, 1), t, poison)


def _reduction_into(s: dict, rows: Tensor, heads: Tensor, t: StageTables, poison: bool) -> Tensor:
    """Inference: every branch writes its slice of one concat buffer (no torch.cat)."""
    out = rows.new_empty(t.num_rows, s["width"])
    col = 0
    if s["b0"] is not None:
        torch.ops.lc.gather_conv_into(rows, t.input_taps, s["b0"].weight, s["b0"].bias, True, 0, out, col,
                                      _tiles(t, s["b0"].weight))
        col += s["b0"].weight.shape[2]
    head_col = 0
    for chain, width in zip(s["chains"], s["widths"], strict=True):
        feat, feat_col = heads, head_col
        for conv in chain[:-1]:
            feat = _poison(_gconv(feat, conv, t, feat_col), t, poison)
            feat_col = 0
        last = chain[-1]
        torch.ops.lc.gather_conv_into(feat, t.own[last.geometry][0], last.weight, last.bias, True, feat_col,
                                      out, col, _tiles(t, last.weight))
        col += last.weight.shape[2]
        head_col += width
    torch.ops.lc.gather_max_into(rows, t.input_pool, out, col)
    return _poison(out, t, poison)


def _run_residual(s: dict, x: Tensor, t: StageTables, poison: bool) -> Tensor:
    w_in, b_in = s["in"]
    y = _poison(torch.ops.lc.gather_linear(x, w_in, b_in, None, 1.0, True, 0, _tiles(t, w_in)), t, poison)
    u = _poison(_gconv(y, s["a"], t), t, poison)
    u = _poison(_gconv(u, s["b"], t), t, poison)
    partial = torch.ops.lc.gather_linear(u, s["c1"], s["bias"], x, s["scale"], False, 0, _tiles(t, s["c1"]))
    return _poison(torch.ops.lc.gather_linear(y, s["c0"], None, partial, s["scale"], s["relu"], s["head"],
                                              _tiles(t, s["c0"])), t, poison)


def run_planned(plan: StagePlan, rows: Tensor, tables: StageTables, poison: bool = False) -> Tensor:
    """The stage on the input matrix `rows` (dense NHWC rows or the source's rows) -> (R, C_out)."""
    feat = rows
    for kind, step in plan.steps():
        if kind == "reduction":
            feat = _run_reduction(step, feat, tables, poison)
        elif kind == "residual":
            feat = _run_residual(step, feat, tables, poison)
        else:
            feat = _poison(torch.ops.lc.gather_linear(feat, step["w"], step["bias"], None, 1.0, True, 0,
                                                      _tiles(tables, step["w"])), tables, poison)
    return feat
