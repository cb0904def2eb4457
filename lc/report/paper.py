"""The published numbers of the paper (results/paper/*.csv), loaded in one place."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PAPER_DIR = Path(__file__).resolve().parents[2] / "results" / "paper"

PAPER_TABLES = {
    1: "table1_rho_sweep.csv",
    2: "table2_ablation.csv",
    3: "table3_speed.csv",
    4: "table4_voc_test_per_class.csv",
    5: "table5_cityscapes_test_per_class.csv",
    6: "table6_sota.csv",
}


def load_paper_table(number: int, paper_dir: str | Path | None = None) -> pd.DataFrame:
    """Published Table `number` (1-6) as a DataFrame, exactly as printed in the paper."""
    if number not in PAPER_TABLES:
        raise ValueError(f"the paper has Tables 1-6, not {number}")
    path = Path(paper_dir or PAPER_DIR) / PAPER_TABLES[number]
    if not path.exists():
        raise FileNotFoundError(f"published table {path} is missing; restore it from git (results/paper/)")
    return pd.read_csv(path, keep_default_na=False, na_values=[""])

# How the paper timed Table 3 and Table 6's FPS (PAPER.md): 512 x 512 images on the authors' GPU, a
# Titan X class card. Our times are compared (diff_ms, diff_fps) only when made the same way.
PAPER_SPEED_PROTOCOL = {"device": "Titan X", "image_size": 512}

# Published numbers read off the paper's figures (optional: absent until transcribed; the figures then
# show what the tables give). fig7b_stage_time.csv: method, rho, stage, ms.
PAPER_FIGURES = {"fig7b": "fig7b_stage_time.csv"}


def load_paper_figure(name: str, paper_dir: str | Path | None = None) -> pd.DataFrame | None:
    """Published numbers of figure `name` (PAPER_FIGURES), or None when results/paper/ has no file."""
    path = Path(paper_dir or PAPER_DIR) / PAPER_FIGURES[name]
    return pd.read_csv(path) if path.exists() else None
