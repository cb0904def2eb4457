"""The paper's figures (1, 4, 5a, 5b, 6, 7a, 7b) rebuilt from a run's outputs, as PNG and PDF.

Each figure reads the files of the README's contract under results/<preset>/; its title names the
preset and the device the numbers were made on. Published numbers come from lc.report.paper only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lc.data.io import atomic_path

PAGE_WIDTH_IN = 7.0
STAGE_COLOURS = ("#4c72b0", "#dd8452", "#c44e52")  # stage 1, 2, 3
UNPROCESSED_GREY = np.array([60, 60, 60], dtype=np.uint8)

# figure name -> files it reads (relative to results/<preset>/)
FIGURE_INPUTS: dict[str, tuple[str, ...]] = {
    "fig1_difficulty": ("analysis/difficulty_voc.csv", "analysis/difficulty_voc.json"),
    "fig4_stages_voc": ("analysis/stage_examples_voc.npz",),
    "fig5a_label_distribution": ("runs/voc/lc/eval_val.json",),
    "fig5b_stage_share": ("runs/voc/lc/sweep_val.csv",),
    "fig6_stages_cityscapes": ("analysis/stage_examples_cityscapes.npz",),
    "fig7a_miou_vs_speed": ("runs/voc/lc/sweep_val.csv", "bench/rho_speed.csv"),
    "fig7b_stage_time": ("bench/stage_time.csv",),
}
FIGURES = tuple(FIGURE_INPUTS)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "figure.titlesize": 10,
                         "legend.fontsize": 7, "savefig.dpi": 150})
    return plt


def _read_csv(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def _device(values) -> str:
    devices = sorted({str(v) for v in values if v is not None and str(v) != "nan"})
    return ", ".join(devices) if devices else "unknown device"


def _suptitle(fig, title: str, preset: str, device: str) -> None:
    fig.suptitle(f"{title}\npreset {preset}, {device}")


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    """PNG and PDF, each written to a temp name and renamed (never half-written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight")
        paths.append(path)
    fig.clf()
    return paths


# --- Figure 1: pixel difficulty --------------------------------------------------------------
def fig1_difficulty(results: Path, cfg: dict, plt):
    table = _read_csv(results / "analysis/difficulty_voc.csv")
    summary = json.loads((results / "analysis/difficulty_voc.json").read_text())
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
    device = summary.get("device") or _device(table.get("device", []))
    _suptitle(fig, "Fig. 1: pixel difficulty of the single-loss IRNet (VOC val)", cfg["preset"], device)
    return fig


# --- Figures 4 and 6: stage-by-stage examples ------------------------------------------------
def _palette(dataset: str) -> np.ndarray:
    from lc.data.labels import CITYSCAPES_CLASS_NAMES, VOC_PALETTE

    if dataset == "voc":
        return VOC_PALETTE
    from cityscapesscripts.helpers.labels import name2label

    palette = np.zeros((256, 3), dtype=np.uint8)
    for train_id, name in enumerate(CITYSCAPES_CLASS_NAMES):
        palette[train_id] = name2label[name].color
    return palette


def _upsample(label: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) stride-s map to `shape`: pixel y shows the logit nearest to
    it, logit i sitting at pixel s*i as in training and evaluation (lc.evaluation.alignment)."""
    def nearest(size: int, cells: int) -> np.ndarray:
        stride = -(-size // cells)  # h = ceil(H / stride)
        return np.minimum((np.arange(size) + stride // 2) // stride, cells - 1)

    return label[nearest(shape[0], label.shape[0])][:, nearest(shape[1], label.shape[1])]


def _stage_examples(results: Path, cfg: dict, plt, dataset: str, number: int):
    data = np.load(results / f"analysis/stage_examples_{dataset}.npz", allow_pickle=False)
    images, labels = data["images"], data["labels"]
    masks, preds, final = data["stage_masks"], data["stage_predictions"], data["final"]
    decided = data["decided_at_stage"]
    palette = _palette(dataset)
    count = min(len(images), 4)
    columns = ["image", "ground truth", "stage 1", "stage 2", "stage 3", "final", "decided at stage"]
    aspect = images.shape[1] / images.shape[2]
    # fixed margins in inches: the two-line title above, the legend below, whatever the row count
    height = PAGE_WIDTH_IN / len(columns) * aspect * count * 1.1 + 1.4
    fig, axes = plt.subplots(count, len(columns), squeeze=False, figsize=(PAGE_WIDTH_IN, height))
    stage_rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in STAGE_COLOURS], dtype=np.uint8)
    for row in range(count):
        shape = images[row].shape[:2]
        panels = [images[row], palette[labels[row]]]
        for stage in range(3):
            rgb = palette[_upsample(preds[row, stage], shape)]
            rgb[~_upsample(masks[row, stage], shape).astype(bool)] = UNPROCESSED_GREY
            panels.append(rgb)
        panels.append(palette[_upsample(final[row], shape)])
        panels.append(stage_rgb[_upsample(decided[row], shape).astype(int).clip(1, 3) - 1])
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STAGE_COLOURS]
    handles.append(plt.Rectangle((0, 0), 1, 1, color=UNPROCESSED_GREY / 255))
    fig.legend(handles, ["decided at stage 1", "stage 2", "stage 3", "not processed by the stage"],
               loc="lower center", ncol=4, frameon=False)
    rho = float(data["rho"]) if "rho" in data else cfg["evaluate"]["rho"]
    name = "PASCAL VOC" if dataset == "voc" else "Cityscapes"
    title = f"Fig. {number}: LC stage by stage on {name} val (rho = {rho:g}; grey: pixels a stage skipped)"
    _suptitle(fig, title, cfg["preset"], _eval_device(results, dataset))
    fig.subplots_adjust(top=1 - 0.85 / height, bottom=0.4 / height, wspace=0.04, hspace=0.04)
    return fig


def _eval_device(results: Path, dataset: str) -> str:
    path = results / "runs" / dataset / "lc" / "eval_val.json"
    return json.loads(path.read_text()).get("device", "unknown device") if path.exists() else "unknown device"


def fig4_stages_voc(results: Path, cfg: dict, plt):
    return _stage_examples(results, cfg, plt, "voc", 4)


def fig6_stages_cityscapes(results: Path, cfg: dict, plt):
    return _stage_examples(results, cfg, plt, "cityscapes", 6)


# --- Figure 5: where the pixels go -----------------------------------------------------------
def fig5a_label_distribution(results: Path, cfg: dict, plt):
    ev = json.loads((results / "runs/voc/lc/eval_val.json").read_text())
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
    _suptitle(fig, title, cfg["preset"], ev.get("device", "unknown device"))
    return fig


def fig5b_stage_share(results: Path, cfg: dict, plt):
    from lc.report.paper import load_paper_table

    sweep = _read_csv(results / "runs/voc/lc/sweep_val.csv").sort_values("rho", ascending=False)
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
    for values, shift, hatch, who in ((ours, -width / 2, None, "ours"), (theirs, width / 2, "//", "paper")):
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
    _suptitle(fig, "Fig. 5(b): share of pixels decided at each stage (VOC val; left bar ours, hatched paper)",
              cfg["preset"], _device(sweep.get("device", [])))
    return fig


# --- Figure 7: speed -------------------------------------------------------------------------
def fig7a_miou_vs_speed(results: Path, cfg: dict, plt):
    from lc.report.paper import load_paper_table

    sweep = _read_csv(results / "runs/voc/lc/sweep_val.csv")
    speed = _read_csv(results / "bench/rho_speed.csv")
    ms_by_rho = {round(float(r), 3): float(m) for r, m in zip(speed["rho"], speed["ms_median"], strict=True)}
    rhos = [round(float(r), 3) for r in sweep["rho"]]
    ms = np.array([ms_by_rho.get(r, np.nan) for r in rhos])
    fig, (ax, ax_p) = plt.subplots(1, 2, figsize=(PAGE_WIDTH_IN, 3.2), layout="constrained")
    ax.plot(ms, sweep["miou"], "o-", color=STAGE_COLOURS[0], label="LC over rho (ours)")
    for r, m, v in zip(rhos, ms, sweep["miou"], strict=True):
        ax.annotate(f"{r:g}", (m, v), textcoords="offset points", xytext=(4, 3), fontsize=6)
    device = _device(speed.get("device", []))
    ax.set_xlabel(f"time per image (ms, median, {device})")
    ax.set_ylabel("mIoU on VOC val (%)")
    ax.set_title("(i) this run (labels: rho)")
    ax.legend()
    table1, table3 = load_paper_table(1), load_paper_table(3).set_index("method")
    for method, marker in (("DeepLab-v2", "s"), ("SegNet", "^"), ("LC", "o"), ("LC (fast)", "o")):
        row = table3.loc[method]
        ax_p.plot(row["ms"], row["miou"], marker, color="#c44e52" if method.startswith("LC") else "#8c8c8c")
        ax_p.annotate(method, (row["ms"], row["miou"]), textcoords="offset points", xytext=(4, 3), fontsize=6)
    ax_p.set_xlabel("time per image (ms, paper's GPU, 512 x 512)")
    ax_p.set_ylabel("mIoU (%), paper")
    best = table1.loc[table1["miou"].idxmax()]
    ax_p.set_title(f"(ii) the paper (Table 3; LC at rho {best['rho']:g}, LC fast at "
                   f"{table1['rho'].min():g})")
    _suptitle(fig, "Fig. 7(a): accuracy against speed over rho", cfg["preset"], device)
    return fig


def fig7b_stage_time(results: Path, cfg: dict, plt):
    timing = _read_csv(results / "bench/stage_time.csv")
    groups = list(timing.groupby(["method", "rho"], sort=False, dropna=False))
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH_IN, 2.8), layout="constrained")
    labels = []
    for i, ((method, rho), rows) in enumerate(groups):
        left = 0.0
        for _, row in rows.sort_values("stage").iterrows():
            stage = int(row["stage"])
            ax.barh(i, row["ms_median"], left=left, color=STAGE_COLOURS[stage - 1],
                    label=f"stage {stage}" if i == 0 else None)
            ax.text(left + row["ms_median"] / 2, i, f"{row['active_pct']:.0f}%", ha="center", va="center",
                    fontsize=6, color="white")
            left += row["ms_median"]
        labels.append(f"{method} (rho {float(rho):g})" if str(rho) != "nan" else str(method))
    ax.set_yticks(range(len(groups)), labels)
    ax.invert_yaxis()
    device = _device(timing.get("device", []))
    ax.set_xlabel(f"time per image (ms, median, {device}); bar labels: % of pixels the stage computes")
    ax.legend(loc="lower right")
    _suptitle(fig, "Fig. 7(b): time spent in each stage", cfg["preset"], device)
    return fig


BUILDERS: dict[str, Callable] = {
    "fig1_difficulty": fig1_difficulty, "fig4_stages_voc": fig4_stages_voc,
    "fig5a_label_distribution": fig5a_label_distribution, "fig5b_stage_share": fig5b_stage_share,
    "fig6_stages_cityscapes": fig6_stages_cityscapes, "fig7a_miou_vs_speed": fig7a_miou_vs_speed,
    "fig7b_stage_time": fig7b_stage_time,
}


def missing_inputs(name: str, results: str | Path) -> list[Path]:
    """The input files of figure `name` that do not exist under results/<preset>/."""
    return [Path(results) / rel for rel in FIGURE_INPUTS[name] if not (Path(results) / rel).exists()]


def make_figure(name: str, cfg: dict, results: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure `name` from the run under `results`; returns the PNG and PDF paths."""
    if name not in BUILDERS:
        raise ValueError(f"unknown figure {name!r}; expected one of {FIGURES}")
    missing = missing_inputs(name, results)
    if missing:
        raise FileNotFoundError(f"{name} needs {', '.join(map(str, missing))}; "
                                f"run `snakemake --cores all figures --config preset={cfg['preset']}`")
    plt = _plt()
    fig = BUILDERS[name](Path(results), cfg, plt)
    try:
        return _save(fig, Path(out_dir), name)
    finally:
        plt.close(fig)
