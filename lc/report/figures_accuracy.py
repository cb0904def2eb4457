"""Figures 1 and 5: pixel difficulty of the baseline, and where the pixels go over the stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lc.report import outputs
from lc.report.figure_common import (
    PAGE_WIDTH_IN,
    PUBLISHED_HATCH,
    STAGE_COLOURS,
    device_text,
    read_csv,
    suptitle,
)
from lc.report.paper import load_paper_table


# --- Figure 1: pixel difficulty --------------------------------------------------------------
def fig1_difficulty(results: Path, cfg: dict, plt):
    table = read_csv(results / outputs.difficulty("csv"))
    summary = json.loads((results / outputs.difficulty("json")).read_text())
    fig, (ax, ax_b) = plt.subplots(1, 2, figsize=(PAGE_WIDTH_IN, 3.4), width_ratios=[5, 1],
                                   layout="constrained")
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for column, label, colour in (("easy_pct", "easy (correct, conf. > {c})", "#55a868"),
                                  ("moderate_pct", "moderate (conf. <= {c})", "#ccb974"),
                                  ("hard_pct", "hard (wrong, conf. > {c})", "#c44e52")):
        values = table[column].to_numpy(dtype=float)
        ax.bar(x, values, bottom=bottom, color=colour,
               label=label.format(c=cfg["evaluate"]["difficulty"]["confidence"]))
        bottom += values
    ax.set_xticks(x, table["class"], rotation=90)
    ax.set_ylabel("share of the class's pixels (%)")
    ax.set_ylim(0, 100)
    ax.set_title("(a) easy / moderate / hard pixels per class")
    ax.legend(loc="lower right", framealpha=0.9)
    ax_b.set_xticks([0, 1], [f"within {cfg['evaluate']['difficulty']['boundary_px']} px\nof a boundary",
                             "interior"], rotation=90)
    ax_b.set_ylim(0, 100)
    ax_b.set_ylabel("share of hard pixels (%)")
    ax_b.set_title("(b) hard pixels")
    if summary.get("hard_boundary_share") is None:  # the model made no confident mistake
        ax_b.text(0.5, 50, "no hard pixels", ha="center", va="center")
    else:
        share_pct = float(summary["hard_boundary_share"]) * 100
        ax_b.bar([0, 1], [share_pct, 100 - share_pct], color=["#c44e52", "#8c8c8c"])
        ax_b.text(0, share_pct + 2, f"{share_pct:.0f}%", ha="center")
    device = summary.get("device") or device_text(table.get("device", []))
    suptitle(fig, "Fig. 1: pixel difficulty of the single-loss IRNet (VOC val)", cfg["preset"], device)
    return fig


# --- Figure 5: where the pixels go -----------------------------------------------------------
def fig5a_label_distribution(results: Path, cfg: dict, plt):
    ev = json.loads((results / outputs.eval_json("voc", "lc")).read_text())
    hist = ev["routed_label_hist"]
    names = ev["class_names"]
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 3.2), layout="constrained")
    x = np.arange(len(names))
    width = 0.27
    for offset, (key, label, colour) in enumerate((("all", "all pixels", "#8c8c8c"),
                                                   ("stage2", "passed to stage 2", STAGE_COLOURS[1]),
                                                   ("stage3", "passed to stage 3", STAGE_COLOURS[2]))):
        counts = np.asarray(hist[key], dtype=float)
        total = counts.sum()
        share = counts / total * 100 if total > 0 else np.zeros_like(counts)
        ax.bar(x + (offset - 1) * width, share, width, color=colour, label=f"{label} (n = {int(total)})")
    ax.set_xticks(x, names, rotation=90)
    ax.set_ylabel("share of the set's labelled pixels (%)")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.legend()
    title = f"Fig. 5(a): label distribution of the pixels each stage receives (VOC val, rho = {ev['rho']:g})"
    suptitle(fig, title, cfg["preset"], ev.get("device", "unknown device"))
    return fig


def fig5b_stage_share(results: Path, cfg: dict, plt):
    sweep = read_csv(results / outputs.sweep_csv()).sort_values("rho", ascending=False)
    paper = load_paper_table(1)
    paper_by_rho = {round(float(r), 3): (s1, s2) for r, s1, s2 in
                    zip(paper["rho"], paper["stage1_pct"], paper["stage2_pct"], strict=True)}
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 3.2), layout="constrained")
    x = np.arange(len(sweep))
    width = 0.38
    ours = sweep[["stage1_pct", "stage2_pct", "stage3_pct"]].to_numpy(dtype=float)
    theirs = np.full_like(ours, np.nan)
    for i, rho in enumerate(sweep["rho"]):
        if round(float(rho), 3) in paper_by_rho:
            s1, s2 = paper_by_rho[round(float(rho), 3)]
            theirs[i] = (s1, s2, 100 - s1 - s2)
    for values, shift, hatch, who in ((ours, -width / 2, None, "ours"),
                                      (theirs, width / 2, PUBLISHED_HATCH, "published")):
        bottom = np.zeros(len(x))
        for stage in range(3):
            ax.bar(x + shift, np.nan_to_num(values[:, stage]), width, bottom=bottom,
                   color=STAGE_COLOURS[stage], hatch=hatch, edgecolor="white",
                   label=f"stage {stage + 1} ({who})")
            bottom += np.nan_to_num(values[:, stage])
    ax.set_xticks(x, [f"{r:g}" for r in sweep["rho"]])
    ax.set_xlabel("rho (routing threshold)")
    ax.set_ylabel("pixels decided at the stage (%)")
    ax.set_ylim(0, 100)
    ax.legend(ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    suptitle(fig, "Fig. 5(b): share of pixels decided at each stage (VOC val; left bar ours, hatched "
             "published)", cfg["preset"], device_text(sweep.get("device", [])))
    return fig
