"""lc.evaluation.analysis: pixel difficulty (hand-made cases and `lc analyze difficulty`), stage examples."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_checkpoint, write_config

from lc.cli.main import main
from lc.data import build_dataset
from lc.evaluation.analysis import DIFFICULTY_COLUMNS, DifficultyCounter, boundary_band, difficulty_masks
from lc.training.checkpoint import load_model


@pytest.fixture(scope="module")
def cfg(prepared_test_cfg):
    return copy.deepcopy(prepared_test_cfg)


def _two_halves(height: int = 10, width: int = 20) -> np.ndarray:
    label = np.zeros((height, width), dtype=np.int64)
    label[:, width // 2:] = 1
    return label


def _one_hot_probs(label: np.ndarray, num_classes: int, top: float) -> np.ndarray:
    """Probabilities with `top` on each pixel's label and the rest spread evenly."""
    rest = (1.0 - top) / (num_classes - 1)
    probs = np.full((num_classes, *label.shape), rest)
    np.put_along_axis(probs, np.clip(label, 0, num_classes - 1)[None], top, axis=0)
    return probs


def test_boundary_band_hand_made():
    band = boundary_band(_two_halves(), radius_px=2)
    assert band.any(axis=0).tolist() == [c in range(7, 13) for c in range(20)]  # columns 7..12
    assert band[:, 7:13].all()
    assert not boundary_band(np.full((5, 5), 3), radius_px=2).any()  # no boundary anywhere
    ignore = np.zeros((4, 20), dtype=np.int64)
    ignore[:, 10] = 255  # the edges of an ignore band are boundaries too
    assert boundary_band(ignore, 0).any(axis=0).tolist() == [c in (9, 10, 11) for c in range(20)]


def test_difficulty_masks_follow_the_definitions():
    label = torch.tensor([[0, 1, 2, 255]])
    probs = torch.tensor([[[0.96, 0.96, 0.50, 0.96]],   # class 0
                          [[0.02, 0.02, 0.50, 0.02]],   # class 1
                          [[0.02, 0.02, 0.00, 0.02]]])  # class 2
    easy, moderate, hard = difficulty_masks(probs, label, confidence=0.95)
    assert easy.tolist() == [[True, False, False, False]]  # correct and confident
    assert hard.tolist() == [[False, True, False, False]]  # wrong and confident
    assert moderate.tolist() == [[False, False, True, False]]  # top score <= 0.95; 255 in no set
    _, moderate_at, _ = difficulty_masks(torch.full((2, 1, 1), 0.5), torch.zeros(1, 1, dtype=torch.long), 0.5)
    assert moderate_at.item()  # "> confidence" is strict: a top score equal to it is moderate


def test_difficulty_counter_hand_made_case():
    label = _two_halves()
    label[0, 0] = 255
    probs = _one_hot_probs(label, 3, top=0.98)  # easy by default
    probs[:, 5, 3] = (0.4, 0.3, 0.3)  # moderate, class 0
    probs[:, 6, 15] = (0.5, 0.5, 0.0)  # moderate, class 1
    wrong = (0.005, 0.005, 0.99)  # confidently class 2: hard
    for row, col in ((1, 9), (2, 10), (3, 12), (4, 2)):  # three in the band (cols 7..12), one outside
        probs[:, row, col] = wrong
    counter = DifficultyCounter(3, confidence=0.95, boundary_px=2)
    counter.add(torch.from_numpy(probs).float(), torch.from_numpy(label))
    table = counter.table(["a", "b", "c"])
    assert list(table.columns) == DIFFICULTY_COLUMNS
    assert table["pixels"].tolist() == [99, 100, 0]
    assert table.loc[0, ["easy_pct", "moderate_pct", "hard_pct"]].tolist() == pytest.approx(
        [100 * 96 / 99, 100 / 99, 100 * 2 / 99])
    assert table.loc[1, ["easy_pct", "moderate_pct", "hard_pct"]].tolist() == pytest.approx([97.0, 1.0, 2.0])
    assert table.loc[2, ["easy_pct", "moderate_pct", "hard_pct"]].isna().all()
    summary = counter.summary()
    assert summary["hard_boundary_share"] == pytest.approx(3 / 4)
    assert summary["hard_pixels"] == 4 and summary["labelled_pixels"] == 199
    # 6 columns x 10 rows around the class boundary, plus 9 labelled pixels around the ignored corner
    assert summary["band_pixel_share"] == pytest.approx((60 + 9) / 199)
    assert summary["easy_pct"] + summary["moderate_pct"] + summary["hard_pct"] == pytest.approx(100.0)


@pytest.mark.slow
def test_analyze_difficulty_cli(cfg, tmp_path):
    # logits sharp enough that the top score lies above 0.95 on about half the pixels
    checkpoint = make_checkpoint(tmp_path / "irnet.pt", cfg, variant="irnet", sharpen=400.0)
    out = tmp_path / "analysis" / "difficulty_voc.csv"
    rc = main(["analyze", "difficulty", "--config", str(write_config(cfg, tmp_path)), "--preset", "test",
               "--checkpoint", str(checkpoint), "--dataset", "voc", "--split", "val", "--out", str(out)])
    assert rc == 0
    table = pd.read_csv(out)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert list(table.columns) == DIFFICULTY_COLUMNS and len(table) == 21
    present = table[table["pixels"] > 0]
    np.testing.assert_allclose(present[["easy_pct", "moderate_pct", "hard_pct"]].sum(axis=1), 100.0)
    assert table.loc[table["pixels"] == 0, "easy_pct"].isna().all()
    data = build_dataset(cfg, "voc", "val")
    labelled = sum(int((data[i]["label"] != 255).sum()) for i in range(len(data)))
    assert table["pixels"].sum() == summary["labelled_pixels"] == labelled
    assert summary["easy_pct"] + summary["hard_pct"] > 10 and summary["moderate_pct"] > 10
    assert summary["hard_pixels"] > 0 and 0.0 <= summary["hard_boundary_share"] <= 1.0
    assert summary["confidence"] == cfg["evaluate"]["difficulty"]["confidence"]
    assert summary["boundary_px"] == cfg["evaluate"]["difficulty"]["boundary_px"]
    assert summary["variant"] == "irnet" and summary["num_images"] == len(data)


@pytest.mark.slow
def test_analyze_stages_cli_writes_the_contract_arrays(cfg, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "lc.pt", cfg, "cityscapes", rho=0.9, sharpen=40.0)
    out = tmp_path / "stage_examples_cityscapes.npz"
    rc = main(["analyze", "stages", "--config", str(write_config(cfg, tmp_path)), "--preset", "test",
               "--checkpoint", str(checkpoint), "--dataset", "cityscapes", "--out", str(out),
               "--num-images", "2", "--rho", "0.5"])
    assert rc == 0
    arrays = np.load(out, allow_pickle=False)
    n, height, width = arrays["labels"].shape
    h, w = arrays["decided_at_stage"].shape[1:]
    assert n == 2 and (h, w) == (height // 8, width // 8)
    expected = {"images": (np.uint8, (n, height, width, 3)), "labels": (np.uint8, (n, height, width)),
                "stage_masks": (np.bool_, (n, 3, h, w)), "stage_predictions": (np.uint8, (n, 3, h, w)),
                "decided_at_stage": (np.uint8, (n, h, w)), "final": (np.uint8, (n, h, w))}
    for key, (dtype, shape) in expected.items():
        assert arrays[key].dtype == dtype and arrays[key].shape == shape, key
    assert arrays["stage_masks"][:, 0].all() and set(np.unique(arrays["decided_at_stage"])) <= {1, 2, 3}
    assert float(arrays["rho"]) == 0.5 and arrays["stage_predictions"].max() < 19
    data = build_dataset(cfg, "cityscapes", "val")
    assert arrays["names"].tolist() == [data[0]["name"], data[1]["name"]]
    output = load_model(checkpoint)(data[0]["image"][None], rho=0.5)
    np.testing.assert_array_equal(arrays["final"][0], output.probs[0].argmax(0).numpy())
    np.testing.assert_array_equal(arrays["decided_at_stage"][0], output.decided_at_stage[0].numpy())
    np.testing.assert_array_equal(arrays["labels"][0], data[0]["label"].numpy())
