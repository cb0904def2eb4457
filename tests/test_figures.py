"""lc.report.figures on small hand-made run outputs in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import make_fake_run

from lc.config import load_config
from lc.report.figures import FIGURE_INPUTS, FIGURES, make_figure, missing_inputs

REPO = Path(__file__).resolve().parent.parent


def _mixed_size_npz(path: Path, num_classes: int, sizes=((32, 48), (48, 32), (40, 40))) -> None:
    """Examples of different sizes, padded to the largest as lc.evaluation.analysis writes them."""
    rng = np.random.default_rng(1)
    n = len(sizes)
    big_h, big_w = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = np.zeros((n, big_h, big_w, 3), dtype=np.uint8)
    labels = np.full((n, big_h, big_w), 255, dtype=np.uint8)
    small = (n, big_h // 8, big_w // 8)
    masks = np.zeros((n, 3, *small[1:]), dtype=bool)
    preds = np.full((n, 3, *small[1:]), 255, dtype=np.uint8)
    final = np.full(small, 255, dtype=np.uint8)
    decided = np.zeros(small, dtype=np.uint8)
    for i, (h, w) in enumerate(sizes):
        images[i, :h, :w] = rng.integers(30, 255, (h, w, 3))
        labels[i, :h, :w] = rng.integers(0, num_classes, (h, w))
        masks[i, :, : h // 8, : w // 8] = True
        preds[i, :, : h // 8, : w // 8] = rng.integers(0, num_classes, (3, h // 8, w // 8))
        final[i, : h // 8, : w // 8] = preds[i, 2, : h // 8, : w // 8]
        decided[i, : h // 8, : w // 8] = 1 + (np.arange(w // 8) % 3)
    np.savez(path, images=images, labels=labels, stage_masks=masks, stage_predictions=preds,
             decided_at_stage=decided, final=final, names=np.array([f"img{i}" for i in range(n)]),
             rho=np.float64(0.9), image_sizes=np.array(sizes, dtype=np.int64))


def _train_logs(results: Path) -> None:
    iterations = np.arange(10, 110, 10)
    for dataset, variant in (("voc", "irnet"), ("voc", "lc"), ("voc", "mc"), ("cityscapes", "lc")):
        folder = results / "runs" / dataset / variant
        folder.mkdir(parents=True, exist_ok=True)
        stages = {f"loss_stage{k}": (3.0 / k) * np.exp(-iterations / 60) + 0.1 for k in (1, 2, 3)}
        if variant == "irnet":  # one loss at the end: no stage columns filled but stage 3
            stages["loss_stage1"] = stages["loss_stage2"] = np.full(len(iterations), np.nan)
        log = pd.DataFrame({"iteration": iterations, "lr": 0.01, "loss": sum(np.nan_to_num(v) for v in
                                                                              stages.values()), **stages,
                            "pixels_stage1": 1.0, "pixels_stage2": 0.5, "pixels_stage3": 0.3, "seconds": 1.0})
        if variant == "lc":
            log["miou"] = np.linspace(10, 50, len(iterations))
        log.to_csv(folder / "train_log.csv", index=False)
        (folder / "train_done.json").write_text(json.dumps({"iterations": 100, "device": "cpu"}))


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
    _train_logs(results)
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


@pytest.mark.slow
def test_every_figure_as_png_and_pdf(drawn):
    assert set(drawn) == {"fig1_difficulty", "fig4_stages_voc", "fig5a_label_distribution",
                          "fig5b_stage_share", "fig6_stages_cityscapes", "fig7a_miou_vs_speed",
                          "fig7b_stage_time", "train_curves"}
    for name, paths in drawn.items():
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        png, pdf = paths
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert pdf.read_bytes()[:5] == b"%PDF-", name
        assert png.stat().st_size > 10_000, name  # a drawn figure, not an empty canvas
        assert not list(png.parent.glob(f".{name}.*")), "temporary files left behind"


@pytest.mark.slow
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


def _image_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_images()]


@pytest.mark.slow
def test_stage_figure_shows_every_example_of_mixed_sizes_cropped(tmp_path, cfg):
    from lc.report.figure_common import pyplot
    from lc.report.figures_stages import COLUMNS, stage_examples

    results = make_fake_figure_run(tmp_path / "results")
    sizes = ((32, 48), (48, 32), (40, 40))
    _mixed_size_npz(results / "analysis/stage_examples_voc.npz", 21, sizes)
    plt = pyplot()
    fig = stage_examples(results, cfg, plt, "voc", 4)
    axes = _image_axes(fig)
    assert len(axes) == len(sizes) * len(COLUMNS)  # every example drawn, not only the first one's size
    for row, (h, w) in enumerate(sizes):
        for ax in axes[row * len(COLUMNS):(row + 1) * len(COLUMNS)]:
            assert ax.get_images()[0].get_array().shape[:2] == (h, w)  # padding trimmed
    plt.close(fig)
    assert make_figure("fig4_stages_voc", cfg, results, tmp_path / "figures")[0].exists()


def test_stage_figure_trims_padding_without_image_sizes(tmp_path, cfg):
    from lc.report.figures_stages import content_size

    path = tmp_path / "old.npz"
    _mixed_size_npz(path, 21, ((32, 48), (48, 32)))
    arrays = dict(np.load(path))
    del arrays["image_sizes"]
    np.savez(path, **arrays)
    data = np.load(path)
    assert [content_size(data, i) for i in range(2)] == [(32, 48), (48, 32)]


@pytest.mark.slow
def test_stage_figures_have_a_class_key(drawn, tmp_path, cfg):
    from lc.data.labels import VOC_CLASS_NAMES
    from lc.report.figure_common import pyplot
    from lc.report.figures_stages import stage_examples

    results = make_fake_figure_run(tmp_path / "results")
    plt = pyplot()
    fig = stage_examples(results, cfg, plt, "voc", 4)
    texts = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    data = np.load(results / "analysis/stage_examples_voc.npz")
    shown = {int(v) for v in np.unique(data["labels"]) if v < 21}
    assert {VOC_CLASS_NAMES[v] for v in shown} <= texts  # every class in the ground truth has a colour key
    assert "decided at stage 1" in texts
    plt.close(fig)


def test_fig7b_shows_published_times_beside_ours(tmp_path, cfg, monkeypatch):
    from lc.report import paper
    from lc.report.figure_common import pyplot
    from lc.report.figures_speed import fig7b_stage_time

    paper_dir = tmp_path / "paper"  # the six tables alone: a user may add the per-stage split
    paper_dir.mkdir()
    for name in paper.PAPER_TABLES.values():
        (paper_dir / name).write_bytes((paper.PAPER_DIR / name).read_bytes())
    monkeypatch.setattr(paper, "PAPER_DIR", paper_dir)
    results = make_fake_figure_run(tmp_path / "results")
    plt = pyplot()
    fig = fig7b_stage_time(results, cfg, plt)
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("(ii) published") for t in titles)
    published = next(ax for ax in fig.axes if ax.get_title().startswith("(ii) published"))
    widths = sorted(round(p.get_width(), 1) for p in published.patches)
    assert widths == [42.5, 65.1]  # Table 3's LC and LC fast, until the per-stage split is transcribed
    plt.close(fig)


def test_fig7b_uses_transcribed_per_stage_times(tmp_path, cfg, monkeypatch):
    from lc.report import paper
    from lc.report.figure_common import pyplot
    from lc.report.figures_speed import fig7b_stage_time

    paper_dir = tmp_path / "paper"
    paper_dir.mkdir()
    for name in paper.PAPER_TABLES.values():
        (paper_dir / name).write_bytes((paper.PAPER_DIR / name).read_bytes())
    pd.DataFrame({"method": ["LC"] * 3, "rho": 0.985, "stage": [1, 2, 3], "ms": [30.0, 20.0, 15.1]}).to_csv(
        paper_dir / paper.PAPER_FIGURES["fig7b"], index=False)
    monkeypatch.setattr(paper, "PAPER_DIR", paper_dir)
    results = make_fake_figure_run(tmp_path / "results")
    plt = pyplot()
    fig = fig7b_stage_time(results, cfg, plt)
    published = next(ax for ax in fig.axes if ax.get_title().startswith("(ii) published"))
    assert sorted(round(p.get_width(), 1) for p in published.patches) == [15.1, 20.0, 30.0]
    assert "per stage" in published.get_title()
    plt.close(fig)


def test_train_curves_one_panel_per_run(tmp_path, cfg):
    from lc.report.figure_common import pyplot
    from lc.report.figures_training import train_curves

    results = make_fake_figure_run(tmp_path / "results")
    plt = pyplot()
    fig = train_curves(results, cfg, plt)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["VOC: IRNet", "VOC: Model Cascade", "VOC: LC", "Cityscapes: LC"]
    lc_panel = next(ax for ax in fig.axes if ax.get_title() == "VOC: LC")
    losses = ["total loss", "stage 1 loss", "stage 2 loss", "stage 3 loss"]
    assert [line.get_label() for line in lc_panel.get_lines()] == losses
    irnet_panel = next(ax for ax in fig.axes if ax.get_title() == "VOC: IRNet")
    assert "stage 1 loss" not in [line.get_label() for line in irnet_panel.get_lines()]  # one loss at the end
    (legend,) = fig.legends  # one key for every panel, with the mIoU the LC logs have
    assert [t.get_text() for t in legend.get_texts()] == ["total loss", "stage 1 loss", "stage 2 loss",
                                                          "stage 3 loss", "mIoU"]
    plt.close(fig)
    assert FIGURE_INPUTS["train_curves"] == ("runs/{dataset}/{variant}/train_log.csv",)
    empty = make_fake_run(tmp_path / "empty")
    assert missing_inputs("train_curves", empty)


def test_fig7a_points_pair_each_rho_with_its_own_model():
    from lc.report.figures_speed import fig7a_points

    sweep = pd.DataFrame({"rho": [1.0, 0.985, 0.8], "miou": [61.0, 62.0, 58.0],
                          "checkpoint": ["runs/voc/dsn/checkpoint.pt", "runs/voc/lc/checkpoint.pt",
                                         "runs/voc/lc_rho0.800/checkpoint.pt"]})
    speed = pd.DataFrame({"rho": [1.0, 0.985, 0.8], "ms_median": [20.0, 14.0, 11.0],
                          "mask_source": ["trained:runs/voc/lc/checkpoint.pt",
                                          "trained:runs/voc/lc/checkpoint.pt",
                                          "trained:runs/voc/lc_rho0.800/checkpoint.pt"]})
    points = fig7a_points(sweep, speed).set_index("rho")
    assert points["same_model"].all()  # rho 1 routes nothing: any model's time is its own
    assert points.loc[0.8, "ms"] == 11.0 and points.loc[0.8, "miou"] == 58.0
    # re-thresholded timing beside a per-rho mIoU: the point is flagged
    speed.loc[2, "mask_source"] = "trained:runs/voc/lc/checkpoint.pt"
    points = fig7a_points(sweep, speed).set_index("rho")
    assert not points.loc[0.8, "same_model"] and points.loc[0.985, "same_model"]
    # a rho the speed benchmark did not time: no time, not paired
    points = fig7a_points(sweep, speed[speed["rho"] != 0.985]).set_index("rho")
    assert np.isnan(points.loc[0.985, "ms"]) and not points.loc[0.985, "same_model"]
