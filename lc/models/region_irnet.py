"""IRNet stages 2 and 3 executed on the active pixels only (Layer Cascade's region execution).

Semantics: a stage run densely with every conv and block output multiplied by the active mask.
The stage's first layers (those consuming the stage input) read the dense input, inactive
neighbours included; every later layer reads zero at inactive pixels; outputs are zero outside.

`run_stage_masked_dense` is that definition written with the modules' own forward (the reference);
`run_stage_compressed` keeps the features as an (N_active, C) matrix through the whole stage: 1x1
convs (merged when they read the same input) are plain GEMMs, kxk convs gather through neighbour
tables that the `ActiveSet` builds once per stage, BatchNorm is folded into the conv weights.
Stages carry the paper's numbers: region execution covers stages 2 and 3 (stage 1 sees every pixel).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from lc.models.backbone import REGION_STAGES, check_region_stage
from lc.models.irnet import Block8, Block17, ConvBN, IRNet, Mixed_6a, Mixed_7a
from lc.models.plan_cache import compute_dtype
from lc.models.region_graphs import graphed_stage
from lc.models.region_plan import check_region_ready, run_planned, stage_plan, stage_rows, stage_tables
from lc.ops.active_set import ActiveSet
from lc.ops.region_conv import compressed_conv, dense_input_conv, linear_rows, region_max_pool
from lc.ops.region_tables import RegionTables, bucket_for

__all__ = ["REGION_STAGES", "apply_region_config", "check_region_ready", "configure_region", "region_options",
           "run_stage_compressed", "run_stage_masked_dense"]

# the planned path (registered ops, packed weights, device tables) and its row buckets; config
# keys region.planned / region.buckets (`configure_region`)
_options = {"planned": True, "buckets": True, "cuda_graphs": True}


def configure_region(planned: bool | None = None, buckets: bool | None = None,
                     cuda_graphs: bool | None = None) -> None:
    """Switch the planned path, its row buckets and its CUDA graphs (the config's `region` block)."""
    for name, value in (("planned", planned), ("buckets", buckets), ("cuda_graphs", cuda_graphs)):
        if value is not None:
            _options[name] = bool(value)


def region_options() -> dict[str, bool]:
    """The switches `configure_region` set (planned, buckets, cuda_graphs), for every backbone."""
    return dict(_options)


def apply_region_config(cfg: dict) -> None:
    """The config's `region` block (planned path, buckets, CUDA graphs) for this process."""
    configure_region(**cfg.get("region", {}))

# Folded conv+BN weights, reused while no parameter changes (inference only: under autograd the
# fold must be part of the graph). Keyed weakly so a deleted model frees its entries.
_fold_cache: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


# --- parameters ---------------------------------------------------------------------------------
def _params_state(modules: Sequence[nn.Module]) -> tuple[tuple, tuple]:
    """(the tensors, their in-place versions): an entry matches only the very same tensors, since a
    replaced parameter can be allocated where a freed one was (same data_ptr, same version 0)."""
    tensors = tuple(t for m in modules for t in (*m.parameters(), *m.buffers()))
    return tensors, tuple(t._version for t in tensors)


def _same_state(a: tuple[tuple, tuple], b: tuple[tuple, tuple]) -> bool:
    return (len(a[0]) == len(b[0]) and all(x is y for x, y in zip(a[0], b[0], strict=True))
            and a[1] == b[1])


def _cached(owner: nn.Module, tag: str, modules: Sequence[nn.Module], build: Callable):
    if torch.is_grad_enabled():
        return build()
    entries = _fold_cache.setdefault(owner, {})
    state = _params_state(modules)
    hit = entries.get(tag)
    if hit is None or not _same_state(hit[0], state):
        hit = (state, build())  # holds the tensors it was built from until the next rebuild
        entries[tag] = hit
    return hit[1]


def _folded(cbr: ConvBN) -> tuple[torch.Tensor, torch.Tensor]:
    def build():
        weight, bias = cbr.fused_weight_bias()
        # (Cout, kh, kw, Cin) memory: gather_conv's tap-major GEMM view of it needs no copy
        return weight.contiguous(memory_format=torch.channels_last), bias
    return _cached(cbr, "fold", [cbr], build)


def _merged_pointwise(owner: nn.Module, tag: str,
                      cbrs: Sequence[ConvBN]) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded 1x1 convs reading one input, stacked into one (sum Cout, Cin) GEMM."""
    def build():
        pairs = [cbr.fused_weight_bias() for cbr in cbrs]
        return torch.cat([w.flatten(1) for w, _ in pairs]), torch.cat([b for _, b in pairs])
    return _cached(owner, tag, list(cbrs), build)


def _scaled_residual(block: Block17 | Block8) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's closing 1x1 conv with its residual scale folded in."""
    def build():
        return block.conv2d.weight.flatten(1) * block.scale, block.conv2d.bias * block.scale
    return _cached(block.conv2d, "scaled", [block.conv2d], build)


def _geometry(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int]]:
    return conv.padding, conv.dilation


# --- compressed execution -----------------------------------------------------------------------
class _StageInput:
    """The stage input, dense (B, C, H, W) or the (M, C) matrix of a larger ActiveSet `source`."""

    def __init__(self, x: torch.Tensor, active: ActiveSet, source: ActiveSet | None):
        if source is None:  # NHWC once: every gather below then reads it through a view
            x = x.contiguous(memory_format=torch.channels_last)
        self.x, self.active, self.source = x, active, source
        self._rows: torch.Tensor | None = None

    def rows(self) -> torch.Tensor:
        if self._rows is None:
            self._rows = (self.active.gather(self.x) if self.source is None
                          else self.x.index_select(0, self.active.rows_in(self.source)))
        return self._rows

    def conv(self, cbr: ConvBN) -> torch.Tensor:
        weight, bias = _folded(cbr)
        padding, dilation = _geometry(cbr.conv)
        return F.relu(dense_input_conv(self.x, self.active, weight, bias, padding, dilation, self.source),
                      inplace=True)

    def max_pool(self, pool: nn.MaxPool2d) -> torch.Tensor:
        if pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
            raise ValueError("region max pool supports dilation 1 and ceil_mode=False only")
        return region_max_pool(self.x, self.active, pool.kernel_size, pool.padding, self.source)


def _pointwise_group(owner: nn.Module, tag: str, rows: torch.Tensor,
                     cbrs: Sequence[ConvBN]) -> list[torch.Tensor]:
    weight, bias = _merged_pointwise(owner, tag, cbrs)
    out = F.relu(linear_rows(rows, weight, bias), inplace=True)
    return list(out.split([cbr.conv.out_channels for cbr in cbrs], dim=1))


def _chain(feat: torch.Tensor, active: ActiveSet, cbrs: Sequence[ConvBN]) -> torch.Tensor:
    for cbr in cbrs:
        weight, bias = _folded(cbr)
        padding, dilation = _geometry(cbr.conv)
        feat = F.relu(compressed_conv(feat, active, weight, bias, padding, dilation), inplace=True)
    return feat


def _mixed_6a(m: Mixed_6a, inp: _StageInput) -> torch.Tensor:
    b0 = inp.conv(m.branch0)
    (b1,) = _pointwise_group(m, "pw", inp.rows(), [m.branch1[0]])
    b1 = _chain(b1, inp.active, m.branch1[1:])
    return torch.cat((b0, b1, inp.max_pool(m.branch2)), 1)


def _mixed_7a(m: Mixed_7a, inp: _StageInput) -> torch.Tensor:
    heads = _pointwise_group(m, "pw", inp.rows(), [m.branch0[0], m.branch1[0], m.branch2[0]])
    sequences = (m.branch0, m.branch1, m.branch2)
    branches = [_chain(h, inp.active, seq[1:]) for h, seq in zip(heads, sequences, strict=True)]
    return torch.cat((*branches, inp.max_pool(m.branch3)), 1)


def _residual_block(m: Block17 | Block8, feat: torch.Tensor, active: ActiveSet) -> torch.Tensor:
    b0, b1 = _pointwise_group(m, "pw", feat, [m.branch0, m.branch1[0]])
    b1 = _chain(b1, active, m.branch1[1:])
    weight, bias = _scaled_residual(m)
    out = linear_rows(torch.cat((b0, b1), 1), weight, bias).add_(feat)
    relu = m.act if isinstance(m, Block17) else m.relu
    return out if relu is None else F.relu(out, inplace=True)


def _module_compressed(name: str, module: nn.Module, state: torch.Tensor | _StageInput,
                       active: ActiveSet) -> torch.Tensor:
    if isinstance(module, nn.Sequential):
        for i, sub in enumerate(module):
            state = _module_compressed(f"{name}.{i}", sub, state, active)
        return state  # type: ignore[return-value]
    if isinstance(module, (Mixed_6a, Mixed_7a)):
        if not isinstance(state, _StageInput):
            raise ValueError(f"{name}: a reduction block must be the first layer of its stage")
        return _mixed_6a(module, state) if isinstance(module, Mixed_6a) else _mixed_7a(module, state)
    feat = state.rows() if isinstance(state, _StageInput) else state
    if isinstance(module, (Block17, Block8)):
        return _residual_block(module, feat, active)
    if isinstance(module, ConvBN):
        return _chain(feat, active, [module])
    raise TypeError(f"no compressed execution for {name} ({type(module).__name__})")


def _check_rows(num_rows: int, active: ActiveSet) -> None:
    if num_rows < active.num_active:  # host ints: on CUDA the table scatter would assert on the device
        raise ValueError(f"num_rows {num_rows} is below the {active.num_active} active pixels")


def planned_tables(irnet: IRNet, stage: int, active: ActiveSet, dtype: torch.dtype,
                   source: ActiveSet | None = None, num_rows: int | None = None):
    """(plan, tables) of a stage on `active`, both cached (tables on the ActiveSet, per bucket)."""
    plan = stage_plan(irnet, stage, dtype)
    if num_rows is None:  # buckets serve CUDA graphs; on the CPU padded rows are only extra work
        num_rows = (bucket_for(active.num_active, active.num_pixels)
                    if _options["buckets"] and active.mask.is_cuda else active.num_active)
    _check_rows(num_rows, active)
    # dtype: the tables carry the plan's Triton tiles, which depend on it
    key = ("planned", tuple(plan.geometries), int(num_rows), source, dtype)
    tables = active._tables.get(key)
    if tables is None:
        src_rows = None
        if source is not None:
            src_key = ("region_rows", source.num_active)
            if src_key not in source._tables:
                source._tables[src_key] = RegionTables(source.mask, source.num_active)
            src_rows = source._tables[src_key]
        tables = stage_tables(plan, active.mask, int(num_rows), active.num_active, src_rows)
        active._tables[key] = tables
    return plan, tables


def _run_eager(irnet: IRNet, stage: int, x: torch.Tensor, active: ActiveSet, source: ActiveSet | None,
               dtype: torch.dtype, num_rows: int | None) -> torch.Tensor:
    """The planned stage run op by op -> (N_active, C_out)."""
    plan, tables = planned_tables(irnet, stage, active, dtype, source, num_rows)
    out = run_planned(plan, stage_rows(x, source, dtype), tables)
    return out if tables.num_rows == active.num_active else out[: active.num_active]


def _run_graphed(irnet: IRNet, stage: int, x: torch.Tensor, active: ActiveSet, source: ActiveSet | None,
                 dtype: torch.dtype, num_rows: int | None, capture_now: bool = False) -> torch.Tensor:
    """The stage from its CUDA graph; eagerly at the same bucket while its key waits for capture."""
    plan = stage_plan(irnet, stage, dtype)
    if num_rows is None:
        num_rows = bucket_for(active.num_active, active.num_pixels)
    _check_rows(num_rows, active)
    source_mask = source_rows = None
    rows = x
    if source is not None:  # the previous stage's rows, padded to its bucket (padded rows unread)
        source_rows = bucket_for(source.num_active, source.num_pixels)
        rows = F.pad(x, (0, 0, 0, source_rows - x.shape[0]))
        source_mask = source.mask
    out = graphed_stage(plan, rows, active.mask, int(num_rows), source_mask, source_rows, capture_now)
    if out is None:
        return _run_eager(irnet, stage, x, active, source, dtype, num_rows)
    return out[: active.num_active].clone()  # the graph's output buffer is reused by its next replay


def run_stage_compressed(irnet: IRNet, stage: int, x: torch.Tensor, active: ActiveSet,
                         source: ActiveSet | None = None, *, planned: bool | None = None,
                         num_rows: int | None = None, graphs: bool | None = None) -> torch.Tensor:
    """Stage 2 or 3 of `irnet` at the pixels of `active` -> (N_active, C_out).

    x: the dense stage input (B, C, H, W), or with `source` the (M, C) compressed output of the
    previous stage on the pixels of `source` (a superset of `active`; zero elsewhere).
    planned: the planned path (default: `configure_region`); num_rows: its padded row count
    (default: on CUDA the active count's bucket, on the CPU the count itself); graphs: CUDA-graph
    replay per (stage, bucket) on CUDA without autograd (default: `configure_region`; a key is
    captured at its second use, `graphs=True` captures at the first). Without the plan, the
    per-layer path below.
    """
    active.check_stage_input(x, source)
    if _options["planned"] if planned is None else planned:  # checked when the plan is built
        dtype = compute_dtype(x)
        use_graphs = _options["cuda_graphs"] if graphs is None else graphs
        if use_graphs and x.is_cuda and not torch.is_grad_enabled():  # graphs=True: captured at first use
            return _run_graphed(irnet, stage, x, active, source, dtype, num_rows, capture_now=graphs is True)
        return _run_eager(irnet, stage, x, active, source, dtype, num_rows)
    check_region_ready(irnet, stage)
    state: torch.Tensor | _StageInput = _StageInput(x, active, source)
    for name, module in irnet.stage_modules(stage):
        state = _module_compressed(name, module, state, active)
    if isinstance(state, _StageInput):  # an empty stage
        return state.rows()
    return state


# --- the dense reference ------------------------------------------------------------------------
def _masked_seq(seq: Sequence[nn.Module], x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    for layer in seq:
        x = m * layer(x)
    return x


def _module_masked(module: nn.Module, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Sequential):
        for sub in module:
            x = _module_masked(sub, x, m)
        return x
    if isinstance(module, Mixed_6a):
        return torch.cat((m * module.branch0(x), _masked_seq(module.branch1, x, m),
                          m * module.branch2(x)), 1)
    if isinstance(module, Mixed_7a):
        return torch.cat((_masked_seq(module.branch0, x, m), _masked_seq(module.branch1, x, m),
                          _masked_seq(module.branch2, x, m), m * module.branch3(x)), 1)
    if isinstance(module, (Block17, Block8)):
        branches = torch.cat((m * module.branch0(x), _masked_seq(module.branch1, x, m)), 1)
        out = m * module.conv2d(branches) * module.scale + x
        relu = module.act if isinstance(module, Block17) else module.relu
        return m * (out if relu is None else relu(out))
    if isinstance(module, ConvBN):
        return m * module(x)
    raise TypeError(f"no masked execution for {type(module).__name__}")


def run_stage_masked_dense(irnet: IRNet, stage: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Stage 2 or 3 run densely with every conv and block output multiplied by `mask` (B, H, W)."""
    check_region_stage(stage)
    m = mask.detach().reshape(mask.shape[0], 1, *mask.shape[-2:]).to(x.dtype)
    for _, module in irnet.stage_modules(stage):
        x = _module_masked(module, x, m)
    return x
