"""Training curves: each run's train_log.csv (loss per stage and, when logged, mIoU) against iteration."""

from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.ticker import FormatStrFormatter, LogLocator

from lc.models.variants import TABLE2_ORDER, VARIANTS
from lc.report import outputs
from lc.report.figure_common import PAGE_WIDTH_IN, STAGE_COLOURS, device_text, read_csv, suptitle

DATASET_ORDER = ("voc", "cityscapes")
MIOU_COLUMNS = ("miou", "val_miou")  # optional: plotted on a second axis when a log has one
PANELS_PER_ROW = 3


def _run_order(path: Path) -> tuple:
    dataset, variant = path.parent.parent.name, path.parent.name
    rank = TABLE2_ORDER.index(variant) if variant in TABLE2_ORDER else len(TABLE2_ORDER)
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), rank, variant)


def train_logs(results: Path) -> list[Path]:
    """Every runs/<dataset>/<variant>/train_log.csv under results/<preset>/, in Table 2's order."""
    pattern = outputs.train_log("*", "*")
    return sorted(Path(results).glob(pattern), key=_run_order)


def _train_device(log: Path):
    """The device of the run, from the train_done.json beside its log (None while training)."""
    done = log.with_name(Path(outputs.train_done("d", "v")).name)
    return json.loads(done.read_text()).get("device") if done.exists() else None


def _run_title(path: Path) -> str:
    dataset, variant = path.parent.parent.name, path.parent.name
    label = VARIANTS[variant].label if variant in VARIANTS else variant
    return f"{'VOC' if dataset == 'voc' else dataset.capitalize()}: {label}" + (
        f" [{variant}]" if variant not in VARIANTS else "")


def train_curves(results: Path, cfg: dict, plt):
    logs = train_logs(results)
    if not logs:
        raise FileNotFoundError(f"no {outputs.train_log('<dataset>', '<variant>')} under {results}; "
                                "train a model first")
    rows = math.ceil(len(logs) / PANELS_PER_ROW)
    cols = min(len(logs), PANELS_PER_ROW)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(PAGE_WIDTH_IN, 0.6 + 2.0 * rows),
                             layout="constrained")
    for ax in axes.flat[len(logs):]:
        ax.set_visible(False)
    legend: dict[str, object] = {}
    for ax, path in zip(axes.flat, logs, strict=False):
        log = read_csv(path)
        it = log["iteration"]
        if "loss" in log and log["loss"].notna().any():
            ax.plot(it, log["loss"], color="black", lw=1.2, label="total loss")
        for stage in (1, 2, 3):
            column = f"loss_stage{stage}"
            if column in log and log[column].notna().any():
                ax.plot(it, log[column], color=STAGE_COLOURS[stage - 1], lw=0.9, label=f"stage {stage} loss")
        ax.set_yscale("log")
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))  # 0.2, 0.5, 2, 5: no crowded labels
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=6)
        ax.set_title(_run_title(path), fontsize=8)
        ax.set_xlabel("iteration")
        ax.set_ylabel("training loss (log)")
        miou = next((c for c in MIOU_COLUMNS if c in log and log[c].notna().any()), None)
        axes_of_panel = [ax]
        if miou:
            ax_m = ax.twinx()
            ax_m.plot(it, log[miou], "o--", ms=2, color="#55a868", lw=0.9, label="mIoU")
            ax_m.set_ylabel("mIoU (%)")
            axes_of_panel.append(ax_m)
        for panel_ax in axes_of_panel:
            for handle, label in zip(*panel_ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
    order = sorted(legend, key=lambda label: (label == "mIoU", label != "total loss", label))
    fig.legend([legend[label] for label in order], order, loc="outside lower center", ncol=len(legend),
               frameon=False)
    suptitle(fig, "Training curves: loss per stage against iteration (train_log.csv of each run)",
             cfg["preset"], device_text(_train_device(path) for path in logs))
    return fig
