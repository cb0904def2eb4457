"""Fig. 7(a): LC's ms per image at every rho of evaluate.rho_sweep (masks as in `lc.bench.models`).

With one LC model per rho (evaluate.sweep_retrain, `lc bench rho --rho-checkpoint RHO=CKPT`), each
rho is routed by the masks of its own model, as its mIoU (Table 1) is; `mask_source` names it.
"""

from __future__ import annotations

import pandas as pd

from lc.bench.masks import mask_shares
from lc.bench.models import BenchSetup, build_network, time_lc
from lc.evaluation.progress import progress

__all__ = ["RHO_COLUMNS", "run_rho_bench"]

RHO_COLUMNS = ["rho", "ms_median", "ms_p25", "ms_p75", "fps", "stage1_pct", "stage2_pct", "mask_source",
               "device"]


def run_rho_bench(setup: BenchSetup) -> pd.DataFrame:
    """Fig. 7(a): LC's ms per image at every rho of evaluate.rho_sweep."""
    model = build_network("lc", setup.model_cfg, setup.device)
    rows = []
    rhos = [float(r) for r in setup.cfg["evaluate"]["rho_sweep"]]
    for rho in progress(rhos, len(rhos), "bench rho", log_every=1, unit="rho"):
        timing, mask_sets = time_lc(setup, model, rho)
        stage1_pct, stage2_pct = mask_shares(mask_sets)
        rows.append({"rho": rho, **timing, "stage1_pct": stage1_pct, "stage2_pct": stage2_pct,
                     "mask_source": setup.source_of("lc", rho), "device": setup.device_name})
    return pd.DataFrame(rows)[RHO_COLUMNS]
