"""Figure 7: accuracy against speed over rho (a) and the time spent in each stage (b), beside the paper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lc.report import outputs
from lc.report.figure_common import (
    PAGE_WIDTH_IN,
    PUBLISHED_HATCH,
    STAGE_COLOURS,
    device_text,
    read_csv,
    suptitle,
)
from lc.report.paper import PAPER_SPEED_PROTOCOL, load_paper_figure, load_paper_table
from lc.report.table_common import sweep_training

PAPER_TIMING = (f"published: {PAPER_SPEED_PROTOCOL['device']} class GPU, "
                f"{PAPER_SPEED_PROTOCOL['image_size']} x {PAPER_SPEED_PROTOCOL['image_size']}")


def fig7a_points(sweep, speed):
    """Fig. 7(a)'s points: per rho of the sweep, its mIoU and model (sweep CSV), its ms and routing
    masks (bench/rho_speed.csv), and `same_model`: whether both axes come from the same model (its
    masks route the timing; rho >= 1 routes nothing, so any model's timing is its own)."""
    timing = {round(float(r), 3): row for r, row in zip(speed["rho"], speed.to_dict("records"), strict=True)}
    points = []
    for row in sweep.to_dict("records"):
        rho = round(float(row["rho"]), 3)
        timed = timing.get(rho, {})
        checkpoint = str(row.get("checkpoint", ""))
        masks = str(timed.get("mask_source", ""))
        points.append({"rho": rho, "miou": row["miou"], "model": checkpoint,
                       "ms": float(timed.get("ms_median", np.nan)), "masks": masks,
                       "same_model": bool(timed) and (rho >= 1.0 or masks == f"trained:{checkpoint}")})
    return pd.DataFrame(points)


def fig7a_miou_vs_speed(results: Path, cfg: dict, plt):
    sweep = read_csv(results / outputs.sweep_csv())
    speed = read_csv(results / outputs.bench("rho"))
    points = fig7a_points(sweep, speed)
    rhos, ms = list(points["rho"]), points["ms"].to_numpy(float)
    fig, (ax, ax_p) = plt.subplots(1, 2, figsize=(PAGE_WIDTH_IN, 3.3), layout="constrained")
    ax.plot(ms, sweep["miou"], "o-", color=STAGE_COLOURS[0], label="LC over rho (ours)")
    for r, m, v in zip(rhos, ms, sweep["miou"], strict=True):
        ax.annotate(f"{r:g}", (m, v), textcoords="offset points", xytext=(4, 3), fontsize=6)
    device = device_text(speed.get("device", []))
    ax.set_xlabel(f"time per image (ms, median, {device})")
    ax.set_ylabel("mIoU on VOC val (%)")
    retrained = bool(cfg["evaluate"].get("sweep_retrain", False))
    if retrained and points["same_model"].all():
        how = "one model per rho (its mIoU and its masks' time)"
    elif retrained:
        how = "one model per rho (mIoU); time: masks of " + ", ".join(sorted(set(points["masks"])))[:60]
    else:
        how = "one LC model re-thresholded"
    ax.set_title("(i) this run (labels: rho)\n" + how, fontsize=8)
    ax.legend(loc="lower right")
    table1, table3 = load_paper_table(1), load_paper_table(3).set_index("method")
    for method, marker in (("DeepLab-v2", "s"), ("SegNet", "^"), ("LC", "o"), ("LC (fast)", "o")):
        row = table3.loc[method]
        ax_p.plot(row["ms"], row["miou"], marker, color="#c44e52" if method.startswith("LC") else "#8c8c8c")
        ax_p.annotate(method, (row["ms"], row["miou"]), textcoords="offset points", xytext=(4, 3), fontsize=6)
    ax_p.set_xlabel(f"time per image (ms, {PAPER_TIMING})")
    ax_p.set_ylabel("mIoU (%), published")
    best = table1.loc[table1["miou"].idxmax()]
    ax_p.set_title(f"(ii) published (Table 3)\nLC at rho {best['rho']:g}, LC fast at "
                   f"{table1['rho'].min():g}, one model per rho", fontsize=8)
    suptitle(fig, "Fig. 7(a): accuracy against speed over rho", cfg["preset"],
             f"{device}; ours: {sweep_training(cfg)}")
    return fig


def _label(method, rho) -> str:
    return f"{method} (rho {float(rho):g})" if str(rho) != "nan" and rho is not None else str(method)


def _published_stage_rows() -> tuple[list, str]:
    """[(label, [(stage, ms), ...])] of the paper's per-stage times and what they are.

    From results/paper/fig7b_stage_time.csv when transcribed; otherwise the paper's per-image totals
    of LC and LC fast (Table 3) as one bar each.
    """
    per_stage = load_paper_figure("fig7b")
    if per_stage is not None:
        groups = per_stage.groupby(["method", "rho"], sort=False, dropna=False)
        return ([(_label(m, r), [(int(s), float(t)) for s, t in zip(g["stage"], g["ms"], strict=True)])
                 for (m, r), g in groups], "per stage")
    table3, table1 = load_paper_table(3).set_index("method"), load_paper_table(1)
    best = float(table1.loc[table1["miou"].idxmax()]["rho"])
    rows = [(f"LC (rho {best:g})", [(0, float(table3.loc["LC", "ms"]))]),
            (f"LC fast (rho {float(table1['rho'].min()):g})", [(0, float(table3.loc["LC (fast)", "ms"]))])]
    return rows, "Table 3 totals; per-stage split not in results/paper/"


def fig7b_stage_time(results: Path, cfg: dict, plt):
    timing = read_csv(results / outputs.bench("stages"))
    ours = list(timing.groupby(["method", "rho"], sort=False, dropna=False))
    published, what = _published_stage_rows()
    fig, (ax, ax_p) = plt.subplots(1, 2, figsize=(PAGE_WIDTH_IN, 2.2 + 0.25 * max(len(ours), len(published))),
                                   layout="constrained")
    labels = []
    for i, ((method, rho), rows) in enumerate(ours):
        left = 0.0
        for _, row in rows.sort_values("stage").iterrows():
            stage = int(row["stage"])
            ax.barh(i, row["ms_median"], left=left, color=STAGE_COLOURS[stage - 1],
                    label=f"stage {stage}" if i == 0 else None)
            ax.text(left + row["ms_median"] / 2, i, f"{row['active_pct']:.0f}%", ha="center", va="center",
                    fontsize=6, color="white")
            left += row["ms_median"]
        labels.append(_label(method, rho))
    ax.set_yticks(range(len(ours)), labels)
    ax.invert_yaxis()
    device = device_text(timing.get("device", []))
    ax.set_xlabel(f"ms per image (median, {device})")
    ax.set_title("(i) this run\n(bar labels: % of pixels the stage computes)", fontsize=8)
    ax.legend(loc="lower right")
    for i, (_, stages) in enumerate(published):
        left = 0.0
        for stage, ms in stages:
            colour = STAGE_COLOURS[stage - 1] if stage else "#8c8c8c"
            ax_p.barh(i, ms, left=left, color=colour, hatch=PUBLISHED_HATCH, edgecolor="white")
            ax_p.text(left + ms / 2, i, f"{ms:g}", ha="center", va="center", fontsize=6, color="white")
            left += ms
    ax_p.set_yticks(range(len(published)), [label for label, _ in published])
    ax_p.invert_yaxis()
    ax_p.set_xlabel(f"ms per image ({PAPER_TIMING})")
    ax_p.set_title(f"(ii) published\n({what})", fontsize=8)
    suptitle(fig, "Fig. 7(b): time spent in each stage, ours beside the published times", cfg["preset"],
             device)
    return fig
