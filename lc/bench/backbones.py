""""LC across backbones": the configured backbone's LC against the same backbone dense (one head).

`lc bench backbone --backbone NAME --checkpoint <its LC checkpoint>`: for every rho of
`backbones.rhos` (and evaluate.rho), LC's ms per image routed by the checkpoint's own masks on VOC
val images (`lc.bench.masks.TrainedMasks`, as Fig. 7(a)), the dense single-loss network's ms, their
ratio (measured speedup: the median per-round ratio, both timed in the same interleaved rounds),
and the FLOP-predicted speedup at the same stage shares. Timing weights are
random (time does not depend on them); the network is the configured one (`model:` with the
backbone's keys merged), not the full-size one.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lc.bench.masks import mask_shares
from lc.bench.models import BenchSetup, build_network, lc_step, network_flops, prescribed_routing
from lc.bench.timing import measure_interleaved, paired_ratio, write_csv
from lc.models.complexity import count_parameters, predicted_cost

__all__ = ["BACKBONE_BENCH_COLUMNS", "backbone_rhos", "run_backbone_bench"]

BACKBONE_BENCH_COLUMNS = ["backbone", "rho", "dense_ms", "lc_ms", "measured_speedup", "predicted_speedup",
                          "stage1_pct", "stage2_pct", "dense_gflops", "lc_gflops", "dense_params_m",
                          "lc_params_m", "stage_flop_shares", "image_size", "batch_size", "threads",
                          "mask_source", "device"]


def backbone_rhos(cfg: dict) -> list[float]:
    """backbones.rhos plus evaluate.rho (the table's operating point), sorted high to low."""
    rhos = {float(r) for r in (cfg.get("backbones") or {}).get("rhos", [])} | {float(cfg["evaluate"]["rho"])}
    return sorted(rhos, reverse=True)


def run_backbone_bench(cfg: dict, checkpoint: str | Path, out: str | Path, backbone: str,
                       device: str | None = None, warmup: int | None = None, runs: int | None = None,
                       threads: int | None = None) -> pd.DataFrame:
    """One row per rho (see the module docstring); the CSV is written atomically."""
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist; train the backbone's LC model "
                                "first (snakemake backbones)")
    setup = BenchSetup.from_config({**cfg, "bench": {**cfg["bench"], "full_size_models": False}},
                                   checkpoint=checkpoint, device=device, warmup=warmup, runs=runs,
                                   threads=threads)
    dense = build_network("irnet", setup.model_cfg, setup.device)
    images = setup.images()
    dense_flops = sum(network_flops("irnet", setup.model_cfg, setup.image_size))
    lc_flops = network_flops("lc", setup.model_cfg, setup.image_size)
    model = build_network("lc", setup.model_cfg, setup.device)
    shares = "/".join(f"{100 * f / sum(lc_flops):.1f}" for f in lc_flops)
    rows = []
    for rho in backbone_rhos(cfg):
        # dense and LC in the same interleaved rounds: a drifting machine load hits both alike
        mask_sets = setup.mask_sets_for(rho, model)
        steps = {"dense": lambda _i: dense(images),
                 "lc": lc_step(model, images, prescribed_routing(mask_sets), rho)}
        timings = measure_interleaved(steps, setup.device, setup.warmup_for(mask_sets), setup.runs)
        stage1_pct, stage2_pct = mask_shares(mask_sets)
        passed2 = 1 - stage1_pct / 100
        passed3 = max(0.0, passed2 - stage2_pct / 100)
        lc_cost = predicted_cost(lc_flops, [1.0, passed2, passed3])["flops"]
        rows.append({"backbone": backbone, "rho": rho, "dense_ms": timings["dense"].median,
                     "lc_ms": timings["lc"].median,
                     "measured_speedup": paired_ratio(timings["dense"], timings["lc"]),
                     "predicted_speedup": dense_flops / lc_cost, "stage1_pct": stage1_pct,
                     "stage2_pct": stage2_pct, "dense_gflops": dense_flops / 1e9, "lc_gflops": lc_cost / 1e9,
                     "dense_params_m": count_parameters(dense) / 1e6,
                     "lc_params_m": count_parameters(model) / 1e6,
                     "stage_flop_shares": shares, "image_size": setup.image_size,
                     "batch_size": setup.batch_size, "threads": setup.threads,
                     "mask_source": setup.mask_source, "device": setup.device_name})
    table = pd.DataFrame(rows, columns=BACKBONE_BENCH_COLUMNS)
    write_csv(table, out)
    return table
