"""lc.report.figures on small hand-made run outputs in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_tables import make_fake_run

from lc.config import load_config
from lc.report.figures import FIGURES, make_figure, missing_inputs

REPO = Path(__file__).resolve().parent.parent


def _stage_npz(path: Path, num_classes: int, size=(32, 48)) -> None:
    rng = np.random.default_rng(0)
    n, (h, w) = 2, size
    labels = rng.integers(0, num_classes, (n, h, w)).astype(np.uint8)
    labels[:, :2] = 255
    masks = np.ones((n, 3, h // 8, w // 8), dtype=bool)
    masks[:, 1, :, : w // 16] = False
    masks[:, 2, : h // 16] = False
    decided = np.where(~masks[:, 1], 1, np.where(~masks[:, 2], 2, 3)).astype(np.uint8)
    np.savez(path, images=rng.integers(0, 255, (n, h, w, 3)).astype(np.uint8), labels=labels,
             stage_masks=masks, stage_predictions=rng.integers(0, num_classes, (n, 3, h // 8, w // 8)).astype(
                 np.uint8), decided_at_stage=decided,
             final=rng.integers(0, num_classes, (n, h // 8, w // 8)).astype(np.uint8),
             names=np.array(["a", "b"]), rho=np.float64(0.985))


def make_fake_figure_run(root: Path) -> Path:
    results = make_fake_run(root)
    analysis = results / "analysis"
    analysis.mkdir()
    pd.DataFrame({"class": ["background", "aeroplane", "bicycle"], "easy_pct": [70.0, 40.0, 20.0],
                  "moderate_pct": [25.0, 45.0, 50.0], "hard_pct": [5.0, 15.0, 30.0],
                  "pixels": [1000, 200, 100]}).to_csv(analysis / "difficulty_voc.csv", index=False)
    (analysis / "difficulty_voc.json").write_text(json.dumps({"hard_boundary_share": 0.68, "device": "cpu"}))
    _stage_npz(analysis / "stage_examples_voc.npz", 21)
    _stage_npz(analysis / "stage_examples_cityscapes.npz", 19, size=(32, 64))
    return results


@pytest.fixture(scope="module")
def cfg() -> dict:
    return load_config(REPO / "config.yaml", preset="test")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory, cfg) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("run")
    results = make_fake_figure_run(root / "results")
    out = root / "figures"
    return {name: make_figure(name, cfg, results, out) for name in FIGURES}


def test_every_figure_as_png_and_pdf(drawn):
    assert set(drawn) == {"fig1_difficulty", "fig4_stages_voc", "fig5a_label_distribution",
                          "fig5b_stage_share", "fig6_stages_cityscapes", "fig7a_miou_vs_speed",
                          "fig7b_stage_time"}
    for name, paths in drawn.items():
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        png, pdf = paths
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert pdf.read_bytes()[:5] == b"%PDF-", name
        assert png.stat().st_size > 10_000, name  # a drawn figure, not an empty canvas
        assert not list(png.parent.glob(f".{name}.*")), "temporary files left behind"


def test_png_is_readable_at_page_width(drawn):
    from PIL import Image

    for name, (png, _) in drawn.items():
        width, height = Image.open(png).size
        assert 800 <= width <= 1400, (name, width)  # 7 in at 150 dpi, tight bbox
        assert height >= 250, (name, height)


def test_missing_input_names_the_file(tmp_path, cfg):
    results = make_fake_run(tmp_path / "results")
    assert missing_inputs("fig1_difficulty", results)
    with pytest.raises(FileNotFoundError, match="difficulty_voc.csv"):
        make_figure("fig1_difficulty", cfg, results, tmp_path / "figures")
    with pytest.raises(ValueError, match="unknown figure"):
        make_figure("fig9", cfg, results, tmp_path / "figures")
