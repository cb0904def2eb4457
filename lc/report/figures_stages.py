"""Figures 4 and 6: LC stage by stage on a few val images, with a stage key and a class-colour key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lc.data.labels import IGNORE_INDEX
from lc.report import outputs
from lc.report.figure_common import PAGE_WIDTH_IN, STAGE_COLOURS, suptitle

MAX_EXAMPLES = 4
SKIPPED_DARK, SKIPPED_LIGHT = np.array([90, 90, 90]), np.array([235, 235, 235])
COLUMNS = ("image", "ground truth", "stage 1", "stage 2", "stage 3", "final", "decided at stage")


def _palette(dataset: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """(256 x 3 colours by label value, class names) of the dataset."""
    from lc.data.labels import CITYSCAPES_CLASS_NAMES, VOC_CLASS_NAMES, VOC_PALETTE

    if dataset == "voc":
        return VOC_PALETTE, tuple(VOC_CLASS_NAMES)
    from cityscapesscripts.helpers.labels import name2label

    palette = np.zeros((256, 3), dtype=np.uint8)
    for train_id, name in enumerate(CITYSCAPES_CLASS_NAMES):
        palette[train_id] = name2label[name].color
    return palette, tuple(CITYSCAPES_CLASS_NAMES)


def _upsample(label: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) stride-s map to `shape`: pixel y shows the logit nearest to
    it, logit i sitting at pixel s*i as in training and evaluation (lc.evaluation.alignment)."""
    def nearest(size: int, cells: int) -> np.ndarray:
        stride = -(-size // cells)  # h = ceil(H / stride)
        return np.minimum((np.arange(size) + stride // 2) // stride, cells - 1)

    return label[nearest(shape[0], label.shape[0])][:, nearest(shape[1], label.shape[1])]


def content_size(data, index: int) -> tuple[int, int]:
    """(height, width) of example `index` without padding: `image_sizes` when the npz has it, else the
    box outside which the label is all ignore and the image all black (older npz files)."""
    if "image_sizes" in data:
        height, width = (int(v) for v in data["image_sizes"][index])
        return height, width
    label, image = data["labels"][index], data["images"][index]
    blank = (label == IGNORE_INDEX) & (image.max(axis=-1) == 0)
    rows = np.flatnonzero(~blank.all(axis=1))
    cols = np.flatnonzero(~blank.all(axis=0))
    if rows.size == 0 or cols.size == 0:
        return label.shape
    return int(rows[-1]) + 1, int(cols[-1]) + 1


def _skipped_pattern(shape: tuple[int, int]) -> np.ndarray:
    """A grey checkerboard for pixels a stage skipped: no class colour (Cityscapes' building is grey)."""
    block = max(2, min(shape) // 24)
    rows, cols = np.indices(shape) // block
    return np.where(((rows + cols) % 2 == 0)[..., None], SKIPPED_DARK, SKIPPED_LIGHT).astype(np.uint8)


def _panels(data, row: int, palette: np.ndarray, stage_rgb: np.ndarray) -> list[np.ndarray]:
    """The seven panels of one example, cropped to the image's own size."""
    image = data["images"][row]
    full = image.shape[:2]
    height, width = content_size(data, row)
    masks, preds = data["stage_masks"][row], data["stage_predictions"][row]
    panels = [image, palette[data["labels"][row]]]
    for stage in range(3):
        rgb = palette[_upsample(preds[stage], full)]
        skipped = ~_upsample(masks[stage], full).astype(bool)
        rgb[skipped] = _skipped_pattern(full)[skipped]
        panels.append(rgb)
    panels.append(palette[_upsample(data["final"][row], full)])
    decided = _upsample(data["decided_at_stage"][row], full).astype(int)
    panels.append(stage_rgb[decided.clip(1, 3) - 1])
    return [panel[:height, :width] for panel in panels]


def _classes_shown(data, count: int, num_classes: int) -> list[int]:
    """Label values that appear in the ground truth or a prediction of the shown examples."""
    seen: set[int] = set()
    for key in ("labels", "final", "stage_predictions"):
        seen |= {int(v) for v in np.unique(data[key][:count])}
    return sorted(v for v in seen if v < num_classes)


def stage_examples(results: Path, cfg: dict, plt, dataset: str, number: int):
    data = np.load(results / outputs.stage_examples(dataset), allow_pickle=False)
    palette, class_names = _palette(dataset)
    count = min(len(data["images"]), MAX_EXAMPLES)
    stage_rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in STAGE_COLOURS], dtype=np.uint8)
    sizes = [content_size(data, row) for row in range(count)]
    aspects = [h / w for h, w in sizes]
    cell = PAGE_WIDTH_IN / len(COLUMNS)
    classes = _classes_shown(data, count, len(class_names))
    key_rows = 1 + (len(classes) + 6) // 7  # the stage key, then the class key at 7 per line
    top, bottom = 0.72, 0.16 * key_rows + 0.2  # inches for the title and the two keys
    height = cell * sum(aspects) * 1.03 + top + bottom
    fig, axes = plt.subplots(count, len(COLUMNS), squeeze=False, figsize=(PAGE_WIDTH_IN, height),
                             gridspec_kw={"height_ratios": aspects})
    for row in range(count):
        for col, panel in enumerate(_panels(data, row, palette, stage_rgb)):
            ax = axes[row, col]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(COLUMNS[col], fontsize=7)
    stage_handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STAGE_COLOURS]
    stage_handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=SKIPPED_LIGHT / 255, hatch="xxxx",
                                       edgecolor=SKIPPED_DARK / 255, lw=0))
    fig.legend(stage_handles, ["decided at stage 1", "stage 2", "stage 3", "not processed by the stage"],
               loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, (bottom - 0.2) / height),
               fontsize=6, handlelength=1.2, borderpad=0.1)
    class_handles = [plt.Rectangle((0, 0), 1, 1, color=palette[v] / 255, ec="#999999", lw=0.3)
                     for v in classes]
    fig.legend(class_handles, [class_names[v] for v in classes], loc="lower center", ncol=7, frameon=False,
               bbox_to_anchor=(0.5, 0.0), fontsize=6, handlelength=1.2, columnspacing=0.8, borderpad=0.1,
               title="classes (ground truth, predictions)", title_fontsize=6)
    rho = float(data["rho"]) if "rho" in data else cfg["evaluate"]["rho"]
    name = "PASCAL VOC" if dataset == "voc" else "Cityscapes"
    title = (f"Fig. {number}: LC stage by stage on {name} val (rho = {rho:g}; checkerboard: pixels a stage "
             "skipped)")
    suptitle(fig, title, cfg["preset"], _eval_device(results, dataset))
    fig.subplots_adjust(left=0, right=1, top=1 - top / height, bottom=bottom / height + 0.02,
                        wspace=0.03, hspace=0.03)
    return fig


def _eval_device(results: Path, dataset: str) -> str:
    path = results / outputs.eval_json(dataset, "lc")
    return json.loads(path.read_text()).get("device", "unknown device") if path.exists() else "unknown device"


def fig4_stages_voc(results: Path, cfg: dict, plt):
    return stage_examples(results, cfg, plt, "voc", 4)


def fig6_stages_cityscapes(results: Path, cfg: dict, plt):
    return stage_examples(results, cfg, plt, "cityscapes", 6)
