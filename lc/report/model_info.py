"""`lc model-info`: parameters and GFLOPs per stage of the configured and the full-size networks,
beside the paper's parameter counts, and what region convolution could save at the paper's routing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lc.data import NUM_CLASSES
from lc.data.io import write_csv
from lc.models.complexity import FULL_SIZE_BLOCK_COUNTS, lc_cost_vs_irnet, model_info_rows
from lc.report.paper import load_paper_table

__all__ = ["model_info_table", "predicted_savings", "run_model_info"]


def model_info_table(cfg: dict, full_cfg: dict) -> pd.DataFrame:
    """One row per network and stage (and its total), with the paper's parameters on total rows.

    full_cfg: the config whose model and bench image size are "full size" (the paper preset's).
    """
    table = pd.DataFrame(model_info_rows(cfg["model"], full_cfg["model"], NUM_CLASSES["voc"],
                                         cfg["bench"]["image_size"], full_cfg["bench"]["image_size"]))
    table.insert(0, "preset", cfg["preset"])
    published = load_paper_table(6).drop_duplicates("method").set_index("method")["params_m"]
    table["paper_params_m"] = [published.get(net) if stage == "total" and net in published else None
                               for net, stage in zip(table["network"], table["stage"], strict=True)]
    return table


def predicted_savings(full_cfg: dict, rhos: tuple[float, ...]) -> list[str]:
    """For each full-size IRNet-LC: the FLOP-predicted speedup at the paper's Table 1 stage shares of
    every rho in `rhos` the paper reports, against dense IRNet with one head (Table 3's baseline)."""
    sweep = load_paper_table(1)
    lines = []
    for counts in FULL_SIZE_BLOCK_COUNTS:
        tag = "/".join(map(str, counts))
        model_cfg = {**full_cfg["model"], "width_mult": 1.0, "block_counts": list(counts)}
        for rho in rhos:
            matches = sweep[(sweep["rho"] - rho).abs() < 1e-9]
            if matches.empty:
                continue  # the paper reports shares for its Table 1 thresholds only
            share = matches.iloc[0]
            passed2 = 1 - share["stage1_pct"] / 100
            passed3 = passed2 - share["stage2_pct"] / 100
            cost = lc_cost_vs_irnet(model_cfg, NUM_CLASSES["voc"], full_cfg["bench"]["image_size"],
                                    [1.0, passed2, passed3])
            lines.append(f"IRNet-LC {tag} at the paper's rho={rho} shares (stage 2 {passed2:.0%}, stage 3 "
                         f"{passed3:.0%}): {cost['flops'] / 1e9:.1f} GFLOPs against dense IRNet's "
                         f"{cost['irnet_flops'] / 1e9:.1f}, predicted speedup x{cost['speedup']:.2f}")
    return lines


def run_model_info(cfg: dict, full_cfg: dict,
                   out: str | Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The model-info table (written to `out` as CSV when given) and the predicted-savings lines."""
    table = model_info_table(cfg, full_cfg)
    if out is not None:
        write_csv(table, out)
    return table, predicted_savings(full_cfg, (cfg["evaluate"]["rho"], cfg["evaluate"]["fast_rho"]))
