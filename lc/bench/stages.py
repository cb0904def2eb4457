"""Fig. 7(b): ms per stage of LC at evaluate.rho and fast_rho, and of dense IRNet.

Each stage is timed alone, fed the previous stage's precomputed output: the stage's layers on its
active pixels (dense when all are active), its head and the routing decision. Masks and networks
as in `lc.bench.models`; all nine (method, stage) steps are timed in the same interleaved rounds.
With them, for LC's region stages, their GEMM floor (`gemm_floor_ms`: the planned stage's GEMMs
alone at the same mask sets, `lc.bench.gemm_floor`; the head not included): what the stage would
cost if BLAS were its only cost; and `dense_rate_ms`, what it would cost at dense IRNet's own time per
pixel (stage k of dense IRNet x the active fraction; stage 1 is dense in both, so its own time).

`bound_lines` turns the table into LC's speedup over dense IRNet four ways against the FLOP-predicted
one (`predicted_speedup_vs_irnet`, as in `lc.bench.models`): the stage times as measured; the region
stages at dense IRNet's rate (no overhead at all); the region stages as their GEMMs alone; and the
time-predicted speedup `T_dense / (T1 + f2*T2 + f3*T3)` from dense IRNet's stages. The second is what
LC would reach with region convolution free of every cost dense convolution does not have.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from lc.bench.gemm_floor import stage_floor
from lc.bench.masks import RoutingMasks, mask_shares
from lc.bench.models import BenchSetup, build_network, network_flops
from lc.bench.timing import measure_interleaved
from lc.evaluation.progress import progress
from lc.models.cascade import LayerCascade, undecided_mask
from lc.models.complexity import predicted_cost
from lc.models.region_irnet import run_stage_compressed
from lc.ops.active_set import ActiveSet

__all__ = ["STAGE_COLUMNS", "bound_lines", "run_stages_bench"]

STAGE_COLUMNS = ["method", "rho", "stage", "ms_median", "gemm_floor_ms", "dense_rate_ms", "active_pct",
                 "predicted_speedup_vs_irnet", "device", "mask_source"]


def _lc_stage_steps(model: LayerCascade, images: torch.Tensor, mask_sets: Sequence[RoutingMasks],
                    rho: float) -> tuple[list[Callable[[int], object]], dict[int, Callable[[int], object]]]:
    """One step per stage of LC's forward, each fed the previous stage's precomputed output, and
    {stage: its GEMM floor step} for the stages that run on a region in every mask set.

    Stage k: the stage's layers on its active pixels (dense when all are active), its head and the
    routing decision; fresh ActiveSets per call, so building neighbour tables is counted.
    """
    backbone = model.backbone
    with torch.inference_mode():
        f1 = backbone.forward_stage(1, images)
        stage2_out = []
        for mask2, _ in mask_sets:
            active2 = ActiveSet(mask2)
            feat2 = (run_stage_compressed(backbone, 2, f1, active2) if active2.num_active
                     else f1.new_zeros(0, backbone.stage_channels[1]))
            stage2_out.append((active2, feat2))

    def route(head_logits: torch.Tensor):
        return undecided_mask(head_logits, rho)

    def stage1(i: int):
        return route(model.head(1)(backbone.forward_stage(1, images)))

    def region_stage(stage: int, mask: torch.Tensor, x: torch.Tensor, source: ActiveSet | None):
        if bool(mask.all()) and source is None:
            return route(model.head(stage)(backbone.forward_stage(stage, x)))
        active = ActiveSet(mask)
        if active.num_active == 0:
            return None
        feat = run_stage_compressed(backbone, stage, x, active, source=source)
        return route(active.scatter(model.head(stage).forward_compressed(feat, active)))

    def stage2(i: int):
        return region_stage(2, mask_sets[i % len(mask_sets)][0], f1, None)

    def stage3(i: int):
        active2, feat2 = stage2_out[i % len(mask_sets)]
        return region_stage(3, mask_sets[i % len(mask_sets)][1], feat2, active2)

    def floor(stage: int, mask: torch.Tensor, x: torch.Tensor, source: ActiveSet | None):
        if bool(mask.all()) or not bool(mask.any()):
            return None  # a dense or empty stage has no region GEMMs
        return stage_floor(lambda: run_stage_compressed(backbone, stage, x, ActiveSet(mask), source=source,
                                                        graphs=False))

    per_set = {2: [floor(2, masks[0], f1, None) for masks in mask_sets],
               3: [floor(3, masks[1], feat2, active2)
                   for masks, (active2, feat2) in zip(mask_sets, stage2_out, strict=True)]}
    floors = {stage: (lambda i, steps=steps: steps[i % len(steps)]())
              for stage, steps in per_set.items() if None not in steps}
    return [stage1, stage2, stage3], floors


def _irnet_stage_steps(model: LayerCascade, images: torch.Tensor) -> list[Callable[[int], object]]:
    backbone = model.backbone
    with torch.inference_mode():
        inputs = {1: images}  # the input of each stage
        for stage in (1, 2):
            inputs[stage + 1] = backbone.forward_stage(stage, inputs[stage])
    steps: list[Callable[[int], object]] = [lambda _i, s=s: backbone.forward_stage(s, inputs[s])
                                            for s in (1, 2)]
    steps.append(lambda _i: model.head(3)(backbone.forward_stage(3, inputs[3])))
    return steps


def run_stages_bench(setup: BenchSetup) -> pd.DataFrame:
    """Fig. 7(b): ms per stage of LC at evaluate.rho and fast_rho, and of dense IRNet, every
    (method, stage) timed in the same interleaved rounds (`measure_interleaved`)."""
    ev = setup.cfg["evaluate"]
    images = setup.images()
    steps, meta = {}, {}
    warmup = setup.warmup
    cases = [("lc", float(ev["rho"])), ("lc_fast", float(ev["fast_rho"])), ("irnet", math.nan)]
    for method, rho in progress(cases, len(cases), "bench stages (build)", log_every=1, unit="net"):
        model = build_network(method, setup.model_cfg, setup.device, 1.0 if math.isnan(rho) else rho)
        if method == "irnet":
            method_steps, active = _irnet_stage_steps(model, images), [100.0, 100.0, 100.0]
            source = "none"
        else:
            mask_sets = setup.mask_sets_for(rho, model, method=method)
            method_steps, floors = _lc_stage_steps(model, images, mask_sets, rho)
            steps.update({(method, stage, "gemm_floor"): step for stage, step in floors.items()})
            stage1_pct, stage2_pct = mask_shares(mask_sets)
            active = [100.0, 100.0 - stage1_pct, 100.0 - stage1_pct - stage2_pct]
            source = setup.source_of(method)
            warmup = max(warmup, setup.warmup_for(mask_sets))
        for stage, step in enumerate(method_steps, start=1):
            steps[(method, stage)] = step
            meta[(method, stage)] = {"method": method, "rho": rho, "stage": stage,
                                     "active_pct": active[stage - 1], "mask_source": source}
    timings = measure_interleaved(steps, setup.device, warmup, setup.runs)
    stage_flops = network_flops("lc", setup.model_cfg, setup.image_size)
    irnet_flops = sum(network_flops("irnet", setup.model_cfg, setup.image_size))
    fractions = {method: [meta[(method, s)]["active_pct"] / 100 for s in (1, 2, 3)] for method, _ in meta}
    predicted = {method: 1.0 if method == "irnet" else irnet_flops / predicted_cost(stage_flops, f)["flops"]
                 for method, f in fractions.items()}
    rows = []
    for (method, stage), row in meta.items():
        ms = timings[(method, stage)].median
        floor = timings.get((method, stage, "gemm_floor"))
        rows.append({**row, "ms_median": ms, "device": setup.device_name,
                     "gemm_floor_ms": floor.median if floor is not None else math.nan,
                     "dense_rate_ms": ms if stage == 1
                     else fractions[method][stage - 1] * timings[("irnet", stage)].median,
                     "predicted_speedup_vs_irnet": predicted[method]})
    steps.clear()
    gc.collect()
    return pd.DataFrame(rows)[STAGE_COLUMNS]


def bound_lines(table: pd.DataFrame) -> list[str]:
    """LC's speedup over dense IRNet from the stage times, four ways, each also as a share of the
    FLOP-predicted speedup (the CPU target asks >= 0.9 of it at 256 px), one line per LC method."""
    by_method = {m: rows.set_index("stage") for m, rows in table.groupby("method", sort=False)}
    dense = by_method["irnet"]["ms_median"]
    lines = []
    for method, rows in by_method.items():
        if method == "irnet":
            continue
        predicted = float(rows["predicted_speedup_vs_irnet"].iloc[0])
        floors = rows["gemm_floor_ms"].fillna(rows["ms_median"])  # stage 1, and a dense or empty stage
        ways = {"measured": rows["ms_median"].sum(),
                "region stages at dense IRNet's time per pixel": rows["dense_rate_ms"].sum(),
                "region stages as their GEMMs alone": rows["ms_median"][1] + floors[2] + floors[3],
                "time-predicted": predicted_cost(dense, rows["active_pct"] / 100)["flops"]}
        total = dense.sum()
        parts = [f"{name} x{total / ms:.2f} ({total / ms / predicted:.2f})" for name, ms in ways.items()]
        lines.append(f"{method:>8} rho={rows['rho'].iloc[0]:<6g} speedup over dense IRNet from stage times "
                     f"(share of FLOP-predicted x{predicted:.2f}): " + "; ".join(parts))
    return lines
