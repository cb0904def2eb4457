"""Fig. 7(a): LC's ms per image at every rho of evaluate.rho_sweep (masks as in `lc.bench.models`).

Every rho is timed in the same interleaved rounds (`lc.bench.timing.measure_interleaved`), so the
curve's shape is free of the drift of a shared machine. With one LC model per rho
(evaluate.sweep_retrain, `lc bench rho --rho-checkpoint RHO=CKPT`), each rho is routed by the masks
of its own model, as its mIoU (Table 1) is; `mask_source` names it.
"""

from __future__ import annotations

import pandas as pd

from lc.bench.masks import mask_shares
from lc.bench.models import BenchSetup, build_network, lc_step, prescribed_routing
from lc.bench.timing import measure_interleaved
from lc.evaluation.progress import progress

__all__ = ["RHO_COLUMNS", "run_rho_bench"]

RHO_COLUMNS = ["rho", "ms_median", "ms_p25", "ms_p75", "fps", "stage1_pct", "stage2_pct", "mask_source",
               "device"]


def run_rho_bench(setup: BenchSetup) -> pd.DataFrame:
    """Fig. 7(a): LC's ms per image at every rho of evaluate.rho_sweep, all rhos in the same rounds."""
    model = build_network("lc", setup.model_cfg, setup.device)
    images = setup.images()
    rhos = [float(r) for r in setup.cfg["evaluate"]["rho_sweep"]]
    steps, shares, warmup = {}, {}, setup.warmup
    for rho in progress(rhos, len(rhos), "bench rho (masks)", log_every=1, unit="rho"):
        mask_sets = setup.mask_sets_for(rho, model, method="lc")
        steps[rho] = lc_step(model, images, prescribed_routing(mask_sets), rho)
        shares[rho] = mask_shares(mask_sets)
        warmup = max(warmup, setup.warmup_for(mask_sets))
    timings = measure_interleaved(steps, setup.device, warmup, setup.runs)
    rows = [{"rho": rho, **timings[rho].row(setup.batch_size), "stage1_pct": shares[rho][0],
             "stage2_pct": shares[rho][1], "mask_source": setup.source_of("lc", rho),
             "device": setup.device_name} for rho in rhos]
    return pd.DataFrame(rows)[RHO_COLUMNS]
