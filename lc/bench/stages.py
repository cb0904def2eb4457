"""Fig. 7(b): ms per stage of LC at evaluate.rho and fast_rho, and of dense IRNet.

Each stage is timed alone, fed the previous stage's precomputed output: the stage's layers on its
active pixels (dense when all are active), its head and the routing decision. Masks and networks
as in `lc.bench.models`; all nine (method, stage) steps are timed in the same interleaved rounds.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from lc.bench.masks import RoutingMasks, mask_shares
from lc.bench.models import BenchSetup, build_network
from lc.bench.timing import measure_interleaved
from lc.evaluation.progress import progress
from lc.models.cascade import LayerCascade, undecided_mask
from lc.models.region_irnet import run_stage_compressed
from lc.ops.active_set import ActiveSet

__all__ = ["STAGE_COLUMNS", "run_stages_bench"]

STAGE_COLUMNS = ["method", "rho", "stage", "ms_median", "active_pct", "device", "mask_source"]


def _lc_stage_steps(model: LayerCascade, images: torch.Tensor, mask_sets: Sequence[RoutingMasks],
                    rho: float) -> list[Callable[[int], object]]:
    """One step per stage of LC's forward, each fed the previous stage's precomputed output.

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

    return [stage1, stage2, stage3]


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
            method_steps = _lc_stage_steps(model, images, mask_sets, rho)
            stage1_pct, stage2_pct = mask_shares(mask_sets)
            active = [100.0, 100.0 - stage1_pct, 100.0 - stage1_pct - stage2_pct]
            source = setup.source_of(method)
            warmup = max(warmup, setup.warmup_for(mask_sets))
        for stage, step in enumerate(method_steps, start=1):
            steps[(method, stage)] = step
            meta[(method, stage)] = {"method": method, "rho": rho, "stage": stage,
                                     "active_pct": active[stage - 1], "mask_source": source}
    timings = measure_interleaved(steps, setup.device, warmup, setup.runs)
    rows = [{**meta[key], "ms_median": timing.median, "device": setup.device_name}
            for key, timing in timings.items()]
    steps.clear()
    gc.collect()
    return pd.DataFrame(rows)[STAGE_COLUMNS]
