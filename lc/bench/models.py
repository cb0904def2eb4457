"""Model-level speed, Table 3 (whole networks), and what every model benchmark shares: `BenchSetup`,
`build_network`, `prescribed_routing`. Fig. 7(b) is `lc.bench.stages`, Fig. 7(a) `lc.bench.rho`,
Table 6 `lc.bench.table6`.

Networks get random weights (timing needs none): DeepLab-v2 and SegNet always at full size; dense
IRNet (the `irnet` variant, output stride 8) and IRNet-LC at the paper's `model:` settings when
`bench.full_size_models`, else at the preset's own. LC runs its real forward (`LayerCascade.forward`,
execution "auto": region convolution on the stages with inactive pixels) with the routing
decision computed as usual and then replaced by prescribed masks, from a trained LC model on real
images or with the paper's Table 1 shares (see `lc.bench.timing`), through the forward's routing
hook (`router=`, see `prescribed_routing`). Next to every measured speedup over dense IRNet the CSV
gives the one predicted by FLOPs (`lc.models.complexity`).
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from lc.bench.masks import MASK_SOURCE_PAPER, RoutingMasks, TrainedMasks, mask_shares, routing_mask_sets
from lc.bench.timing import check_threads, measure_interleaved, paired_ratio
from lc.device import device_name, resolve_device
from lc.evaluation.progress import progress
from lc.models.cascade import LayerCascade
from lc.models.complexity import count_parameters, network_costs, predicted_cost, stage_costs
from lc.models.graph_cache import CAPTURE_AT_USE
from lc.models.irnet import fold_batchnorm

__all__ = ["MODEL_COLUMNS", "BenchSetup", "build_network", "lc_step", "network_flops", "prescribed_routing",
           "run_models_bench"]

MODEL_COLUMNS = ["method", "rho", "image_size", "batch_size", "ms_median", "ms_p25", "ms_p75", "fps",
                 "params_m", "stage1_pct", "stage2_pct", "mask_source", "device", "full_size", "runs",
                 "gflops", "speedup_vs_irnet", "predicted_speedup_vs_irnet"]
NUM_CLASSES = 21  # the VOC networks of Tables 3 and 6

log = logging.getLogger(__name__)


@dataclass
class BenchSetup:
    """Everything the model benchmarks share, resolved once from the config and the CLI."""

    cfg: dict
    model_cfg: dict
    full_size: bool
    device: torch.device
    device_name: str
    image_size: int
    batch_size: int
    warmup: int
    runs: int
    mask_sets: int
    masks: TrainedMasks | None
    paper_table1: pd.DataFrame | None
    threads: int
    fast_masks: TrainedMasks | None = None  # LC fast's own model (one model per rho), when given
    rho_masks: dict[float, TrainedMasks] = field(default_factory=dict)  # Fig. 7(a): each rho's own model

    @classmethod
    def from_config(cls, cfg: dict, full_model_cfg: dict | None = None, checkpoint: str | Path | None = None,
                    device: str | None = None, warmup: int | None = None, runs: int | None = None,
                    paper_table1: pd.DataFrame | None = None, threads: int | None = None,
                    fast_checkpoint: str | Path | None = None,
                    rho_checkpoints: Mapping[float, str | Path] | None = None) -> BenchSetup:
        """`full_model_cfg`: the paper preset's `model:` (default: this config's base = its own).

        paper_table1: the published Table 1 (`lc.report.paper.load_paper_table(1)`), whose stage
        shares route LC when no trained checkpoint is given. threads: torch CPU threads (default
        `bench.threads`), set around the benchmark's timings (lc.bench.run, `cpu_threads`) and
        restored after them. fast_checkpoint: the LC model trained at evaluate.fast_rho
        (evaluate.sweep_retrain), whose masks route LC fast; default: the masks of `checkpoint`
        re-thresholded at fast_rho. rho_checkpoints: {rho: the LC model trained at rho}
        (evaluate.sweep_retrain), whose masks route LC at that rho (`lc bench rho`).
        """
        bench = cfg["bench"]
        full_size = bool(bench.get("full_size_models", True))
        model_cfg = dict(full_model_cfg or cfg["model"]) if full_size else dict(cfg["model"])
        dev = resolve_device(device or cfg.get("device", "auto"))
        threads = check_threads(bench["threads"] if threads is None else threads)
        count = int(bench.get("mask_sets", 8)) * int(bench["batch_size"])
        masks = None
        if checkpoint and Path(checkpoint).exists():
            masks = TrainedMasks(checkpoint, cfg, count, dev)
        elif checkpoint:
            log.warning("%s does not exist; timing LC with the paper's stage shares instead", checkpoint)
        fast_masks = None
        if fast_checkpoint is not None:
            if not Path(fast_checkpoint).is_file():
                raise FileNotFoundError(f"--fast-checkpoint {fast_checkpoint} does not exist; train the LC "
                                        "model at evaluate.fast_rho first (the workflow's lc_rho<rho> run)")
            fast_masks = TrainedMasks(fast_checkpoint, cfg, count, dev)
        rho_masks = {}
        for rho, path in (rho_checkpoints or {}).items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"--rho-checkpoint {rho:g}={path}: the file does not exist; train "
                                        "the LC model at that rho first (the workflow's lc_rho<rho> run)")
            rho_masks[float(rho)] = TrainedMasks(path, cfg, count, dev)
        return cls(cfg=cfg, model_cfg=model_cfg, full_size=full_size, device=dev,
                   device_name=device_name(dev), image_size=int(bench["image_size"]),
                   batch_size=int(bench["batch_size"]),
                   warmup=int(bench["warmup"] if warmup is None else warmup),
                   runs=int(bench["runs"] if runs is None else runs),
                   mask_sets=int(bench.get("mask_sets", 8)), masks=masks, paper_table1=paper_table1,
                   threads=threads, fast_masks=fast_masks, rho_masks=rho_masks)

    def warmup_for(self, mask_sets: Sequence[RoutingMasks]) -> int:
        """Warm-up runs for LC: each mask set `CAPTURE_AT_USE` (2) times, since every set brings new
        GEMM shapes (CPU libraries and the Triton launcher prepare each shape on first use) and, on
        CUDA, new graph keys, captured at their second use."""
        return max(self.warmup, CAPTURE_AT_USE * len(mask_sets))

    @property
    def mask_source(self) -> str:
        return self.masks.name if self.masks is not None else MASK_SOURCE_PAPER

    def source_of(self, method: str, rho: float | None = None) -> str:
        """Where `method`'s routing masks come from (LC fast, or LC at a rho with its own model: that
        model when one was given)."""
        if method == "lc_fast" and self.fast_masks is not None:
            return self.fast_masks.name
        if method == "lc" and rho is not None and float(rho) in self.rho_masks:
            return self.rho_masks[float(rho)].name
        return self.mask_source

    def images(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(self.cfg.get("seed", 0)))
        height, width = size or (self.image_size, self.image_size)
        images = torch.randn(self.batch_size, 3, height, width, generator=gen).to(self.device)
        return images.contiguous(memory_format=torch.channels_last)

    def mask_sets_for(self, rho: float, model: LayerCascade, image_hw: tuple[int, int] | None = None,
                      flip: bool = False, method: str = "lc") -> list[RoutingMasks]:
        image_hw = image_hw or (self.image_size, self.image_size)
        grid = model.output_size(*image_hw)
        seed = int(self.cfg.get("seed", 0)) + int(round(rho * 1e4)) + (1 if flip else 0)
        source = self.masks if self.masks is not None else self.paper_table1
        if method == "lc_fast" and self.fast_masks is not None:
            source = self.fast_masks
        elif method == "lc" and float(rho) in self.rho_masks:
            source = self.rho_masks[float(rho)]
        if source is None:
            raise ValueError("timing LC needs routing masks: a trained LC checkpoint (--checkpoint) or "
                             "the paper's Table 1 (BenchSetup.from_config(paper_table1=...))")
        return routing_mask_sets(source, rho, self.batch_size, image_hw, grid, self.mask_sets, seed,
                                 self.device, flip)


def build_network(method: str, model_cfg: dict, device: torch.device, rho: float = 1.0) -> nn.Module:
    """A Table 3 network in eval mode with random weights: deeplab_v2, segnet, irnet, lc, lc_fast.

    At its best for inference: channels_last (`BenchSetup.images` too), and the BatchNorms folded
    into their convs (`fold_batchnorm`; a backbone's own, `Backbone.fold_batchnorm`) in the dense
    network and in LC alike."""
    if method == "deeplab_v2":
        from lc.models.deeplab_v2 import deeplab_v2
        model = deeplab_v2(NUM_CLASSES)
    elif method == "segnet":
        from lc.models.segnet import segnet
        model = segnet(NUM_CLASSES)
    elif method in ("irnet", "lc", "lc_fast"):
        model = LayerCascade(NUM_CLASSES, "irnet" if method == "irnet" else "lc", model_cfg, rho=rho)
    else:
        raise ValueError(f"unknown benchmark method {method!r}; bench.models takes deeplab_v2, segnet, "
                         "irnet, lc, lc_fast")
    model = model.eval().to(device)
    if device.type != "meta":
        # a backbone folds its own BatchNorms (IRNet's ConvBN, ResNet's timm modules); heads have none
        if isinstance(model, LayerCascade):
            model.backbone.fold_batchnorm()
        else:
            fold_batchnorm(model)
    return model.to(memory_format=torch.channels_last)


class prescribed_routing:  # noqa: N801 (a router value, named like the function it replaces)
    """A `router` for `LayerCascade.forward` that hands each routed stage a prescribed mask.

    The model's own rule still decides first (the forward computes it before calling the router),
    so its cost is timed; the stage then runs on the prescribed mask: stage 2 on `set[0]`, stage 3
    on `set[1]` of the mask set chosen by `select(i)`. Use: `model(x, rho=rho, router=routing)`.
    """

    def __init__(self, mask_sets: Sequence[RoutingMasks]):
        self.mask_sets = list(mask_sets)
        if not self.mask_sets:
            raise ValueError("prescribed_routing needs at least one (stage-2, stage-3) mask set")
        self.current: RoutingMasks = self.mask_sets[0]

    def select(self, index: int, mask_sets: Sequence[RoutingMasks] | None = None) -> None:
        """Use mask set `index` (cycling) of `mask_sets` (default: those given at construction)."""
        sets = self.mask_sets if mask_sets is None else mask_sets
        self.current = sets[index % len(sets)]

    def __call__(self, stage: int, proposed: torch.Tensor) -> torch.Tensor:
        if stage not in (2, 3):
            raise ValueError(f"prescribed masks exist for stages 2 and 3, not {stage}")
        return self.current[stage - 2]


def lc_step(model: LayerCascade, images: torch.Tensor, routing: prescribed_routing,
            rho: float) -> Callable[[int], object]:
    """A timed step: LC's forward on `images` routed by mask set i of `routing`."""
    def step(i: int):
        routing.select(i)
        return model(images, rho=rho, router=routing)
    return step


def network_flops(method: str, model_cfg: dict, image_size: int) -> list[float]:
    """Per-stage FLOPs of a cascade (three entries), or one total for a baseline, on one image."""
    with torch.device("meta"):
        model = build_network(method, model_cfg, torch.device("meta"))
    if isinstance(model, LayerCascade):
        return [float(r["flops"]) for r in stage_costs(model, image_size)]
    return [float(network_costs(model, image_size)[-1]["flops"])]


def run_models_bench(setup: BenchSetup) -> pd.DataFrame:
    """Table 3: ms, FPS, params and GFLOPs of each of bench.models, plus LC's speedups.

    Every network is built first, then all are timed call by call in turn (`measure_interleaved`);
    a speedup over dense IRNet is the median of the per-round ratios (`paired_ratio`)."""
    ev = setup.cfg["evaluate"]
    rhos = {"lc": float(ev["rho"]), "lc_fast": float(ev["fast_rho"])}
    rows, steps = {}, {}
    warmup = setup.warmup
    methods = list(setup.cfg["bench"]["models"])
    images = setup.images()
    for method in progress(methods, len(methods), "bench models (build)", log_every=1, unit="net"):
        rho = rhos.get(method, 1.0)
        model = build_network(method, setup.model_cfg, setup.device, rho)
        row = {"method": method, "rho": rho if method in rhos else math.nan,
               "params_m": count_parameters(model) / 1e6, "stage1_pct": math.nan, "stage2_pct": math.nan,
               "mask_source": "none", "full_size": setup.full_size or method in ("deeplab_v2", "segnet")}
        flops = network_flops(method, setup.model_cfg, setup.image_size)
        if method in rhos:
            mask_sets = setup.mask_sets_for(rho, model, method=method)
            steps[method] = lc_step(model, images, prescribed_routing(mask_sets), rho)
            warmup = max(warmup, setup.warmup_for(mask_sets))
            row["stage1_pct"], row["stage2_pct"] = mask_shares(mask_sets)
            passed2 = 1 - row["stage1_pct"] / 100
            passed3 = passed2 - row["stage2_pct"] / 100
            row["gflops"] = predicted_cost(flops, [1.0, passed2, max(0.0, passed3)])["flops"] / 1e9
            row["mask_source"] = setup.source_of(method)
        else:
            steps[method] = lambda _i, m=model: m(images)
            row["gflops"] = sum(flops) / 1e9
        rows[method] = row
    log.info("timing %s in turn: %d warm-up and %d timed rounds", ", ".join(steps), warmup, setup.runs)
    timings = measure_interleaved(steps, setup.device, warmup, setup.runs)
    irnet_gflops = (rows["irnet"]["gflops"] if "irnet" in rows
                    else sum(network_flops("irnet", setup.model_cfg, setup.image_size)) / 1e9)
    table = []
    for method, row in rows.items():
        speedup = paired_ratio(timings["irnet"], timings[method]) if "irnet" in timings else math.nan
        table.append({**row, **timings[method].row(setup.batch_size), "image_size": setup.image_size,
                      "batch_size": setup.batch_size, "device": setup.device_name,
                      "speedup_vs_irnet": speedup,
                      "predicted_speedup_vs_irnet": irnet_gflops / row["gflops"]})
    steps.clear()
    gc.collect()
    return pd.DataFrame(table)[MODEL_COLUMNS]
