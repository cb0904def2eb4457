"""Machinery shared by the figure builders: matplotlib set-up, titles, colours, atomic saving."""

from __future__ import annotations

from pathlib import Path

from lc.data.io import atomic_path

PAGE_WIDTH_IN = 7.0
STAGE_COLOURS = ("#4c72b0", "#dd8452", "#c44e52")  # stage 1, 2, 3
PUBLISHED_HATCH = "//"  # the paper's numbers, wherever a figure shows them beside ours


def pyplot():
    """matplotlib.pyplot on the Agg backend with the figures' font sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "figure.titlesize": 10,
                         "legend.fontsize": 7, "savefig.dpi": 150})
    return plt


def read_csv(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def device_text(values) -> str:
    devices = sorted({str(v) for v in values if v is not None and str(v) != "nan"})
    return ", ".join(devices) if devices else "unknown device"


def suptitle(fig, title: str, preset: str, device: str) -> None:
    fig.suptitle(f"{title}\npreset {preset}, {device}")


def save(fig, out_dir: Path, name: str) -> list[Path]:
    """PNG and PDF, each written to a temp name and renamed (never half-written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight", pad_inches=0.05)
        paths.append(path)
    fig.clf()
    return paths
