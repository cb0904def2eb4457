"""lc.evaluation: evaluate, inference, crf and sweep on the test preset's synthetic VOC (tiny networks)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import make_checkpoint, write_config

from lc.cli.main import main
from lc.data import build_dataset
from lc.evaluation.crf import dense_crf
from lc.evaluation.evaluate import evaluate_model, run_evaluation
from lc.evaluation.inference import (
    SINGLE_VIEW,
    StageTimer,
    View,
    deciding_logits,
    predict,
    protocol_from_config,
    protocol_views,
    reference_view,
)
from lc.evaluation.metrics import confusion_matrix, iou_from_confusion
from lc.evaluation.sweep import SWEEP_COLUMNS, run_sweep, sweep_plan
from lc.models.cascade import CascadeOutput, LayerCascade
from lc.training.checkpoint import load_model, save_checkpoint


def reference_upsample(probs: torch.Tensor, size: tuple[int, int], view_size: tuple[int, int] | None = None,
                       stride: int = 8) -> torch.Tensor:
    """An independent implementation of the evaluation's upsampling (grid_sample on explicit
    coordinates): original pixel y sits at u = (y + 0.5) * H_view / H - 0.5 in the view and at u / 8 on
    the logit grid, clamped to the grid (border padding)."""
    (height, width), (view_h, view_w) = size, view_size or size
    h, w = probs.shape[-2:]
    ys = ((torch.arange(height) + 0.5) * view_h / height - 0.5) / stride
    xs = ((torch.arange(width) + 0.5) * view_w / width - 0.5) / stride
    gy = (ys / max(h - 1, 1) * 2 - 1).view(-1, 1).expand(height, width)
    gx = (xs / max(w - 1, 1) * 2 - 1).view(1, -1).expand(height, width)
    grid = torch.stack([gx, gy], dim=-1)[None].expand(probs.shape[0], -1, -1, -1).to(probs.dtype)
    return F.grid_sample(probs, grid, mode="bilinear", padding_mode="border", align_corners=True)


@pytest.fixture(scope="module")
def cfg(prepared_test_cfg):
    return copy.deepcopy(prepared_test_cfg)


@pytest.fixture(scope="module")
def lc_ckpt(cfg, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("lc") / "checkpoint.pt", cfg, sharpen=40.0)


def _stage1_confidences(model, data) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(data[i]["image"][None], rho=1.0).stage_logits[0].softmax(1).amax(1).flatten()
                          for i in range(len(data))])


# --- lc evaluate -----------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_iou_equals_lc_metrics_on_the_same_predictions(cfg, lc_ckpt, tmp_path):
    out = tmp_path / "eval_val.json"
    rc = main(["evaluate", "--config", str(write_config(cfg, tmp_path)), "--preset", "test",
               "--checkpoint", str(lc_ckpt), "--dataset", "voc", "--split", "val", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())

    # independent recomputation: stride-8 probs upsampled (logit i at pixel 8i) to the label size, argmax
    model, data = load_model(lc_ckpt), build_dataset(cfg, "voc", "val")
    cm = np.zeros((21, 21), dtype=np.int64)
    with torch.inference_mode():
        for i in range(len(data)):
            image, label = data[i]["image"][None], data[i]["label"]
            probs = reference_upsample(model(image).probs, tuple(label.shape))
            cm += confusion_matrix(probs.argmax(1)[0], label, 21)
    iou = iou_from_confusion(cm) * 100
    assert report["confusion"] == cm.tolist()
    assert [v is None for v in report["per_class_iou"]] == np.isnan(iou).tolist()
    np.testing.assert_allclose([v for v in report["per_class_iou"] if v is not None], iou[~np.isnan(iou)])
    assert report["miou"] == pytest.approx(np.nanmean(iou))
    assert report["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum() * 100)
    assert report["num_images"] == len(data) and report["rho"] == 0.9 and report["variant"] == "lc"
    assert report["protocol"] == {**report["protocol"], "scales": [1.0], "flip": False, "crf": False}
    assert report["model"]["matches_config"] and report["model"]["differences_from_config"] == {}
    for key in ("dataset", "split", "preset", "device", "checkpoint", "class_names", "stage_share",
                "routed_label_hist", "ms_per_image", "stage_time_ms"):
        assert key in report
    assert report["ms_per_image"] > 0
    assert len(report["stage_time_ms"]) == 3 and all(t >= 0 for t in report["stage_time_ms"])


def test_multi_scale_with_scale_one_and_no_flip_equals_single_scale(cfg, lc_ckpt):
    single = run_evaluation(cfg, lc_ckpt, "voc", "val", max_images=2)
    one_scale = copy.deepcopy(cfg)
    one_scale["evaluate"].update(scales=[1.0], flip=False)
    multi = run_evaluation(one_scale, lc_ckpt, "voc", "val", multi_scale=True, max_images=2)
    assert multi["confusion"] == single["confusion"]
    assert multi["stage_share"] == single["stage_share"]
    assert multi["protocol"]["scales"] == [1.0] and not multi["protocol"]["flip"]


def test_views_are_resized_mirrored_back_and_fused(cfg, lc_ckpt):
    model = load_model(lc_ckpt)
    image = build_dataset(cfg, "voc", "val")[0]["image"][None]
    size = tuple(image.shape[-2:])
    mirrored = predict(model, image, views=[View(1.0, True)]).probs
    direct = predict(model, image.flip(-1)).probs.flip(-1)
    torch.testing.assert_close(mirrored, direct)

    views = protocol_views([0.75, 1.0], flip=True)
    assert views == [View(0.75), View(0.75, True), View(1.0), View(1.0, True)]
    assert reference_view(views) == View(1.0)
    per_view = []
    with torch.inference_mode():
        for view in views:
            x = F.interpolate(image, size=[round(s * view.scale) for s in size], mode="bilinear",
                              align_corners=False)
            x = x.flip(-1) if view.flip else x
            p = reference_upsample(model(x).probs, size, tuple(x.shape[-2:]))
            per_view.append(p.flip(-1) if view.flip else p)
    averaged = predict(model, image, views=views, fusion="mean")
    torch.testing.assert_close(averaged.probs, torch.stack(per_view).mean(0), atol=1e-6, rtol=1e-5)
    assert averaged.view == View(1.0)
    torch.testing.assert_close(averaged.probs.sum(1), torch.ones(1, *size))

    fused = predict(model, image, views=views, fusion="max_prob")  # max over the views' probabilities
    expected = torch.stack(per_view).amax(0)
    torch.testing.assert_close(fused.probs, expected / expected.sum(1, keepdim=True), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused.probs.sum(1), torch.ones(1, *size))
    assert not torch.equal(fused.probs, averaged.probs)
    logit_max = predict(model, image, views=views, fusion="max")  # DeepLab-v2: max over the views' logits
    torch.testing.assert_close(logit_max.probs.sum(1), torch.ones(1, *size))
    assert not torch.allclose(logit_max.probs, fused.probs)
    with pytest.raises(ValueError, match="evaluate.fusion must be one of"):
        predict(model, image, views=views, fusion="median")


class _ConstantLogits(nn.Module):
    """A "model" with the same logits at every pixel: VIEW_A's for a 16 px wide input, VIEW_B's else."""

    VIEW_A, VIEW_B = (4.0, 3.9, 0.0), (0.0, 0.0, 3.95)
    num_classes, rho = 3, 1.0

    def forward(self, images: torch.Tensor, rho: float | None = None) -> CascadeOutput:
        batch, _, height, width = images.shape
        h, w = -(-height // 8), -(-width // 8)
        values = torch.tensor(self.VIEW_A if width >= 16 else self.VIEW_B)
        logits = values.view(1, 3, 1, 1).expand(batch, 3, h, w).clone()
        full = torch.ones(batch, h, w, dtype=torch.bool)
        return CascadeOutput(stage_logits=[None, None, logits], stage_masks=[full, full, full],
                             decided_at_stage=torch.full((batch, h, w), 3, dtype=torch.uint8),
                             probs=logits.softmax(dim=1))


def test_logit_max_fusion_against_a_hand_computed_example():
    """DeepLab-v2's fusion: per class the larger logit of the two views, (4, 3.9, 3.95), then the
    softmax: e^4, e^3.9, e^3.95 over their sum = 0.35013, 0.31681, 0.33306 (class 0 wins). The
    maximum of the probabilities instead, (0.51253, 0.46376, 0.96323) renormalised = 0.26619,
    0.24086, 0.49295, picks class 2."""
    image = torch.zeros(1, 3, 16, 16)
    views = [View(0.5), View(1.0)]
    logit_max = predict(_ConstantLogits(), image, views=views, fusion="max").probs
    expected = torch.tensor([0.35013, 0.31681, 0.33306]).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    torch.testing.assert_close(logit_max, expected, atol=1e-5, rtol=0)
    assert (logit_max.argmax(1) == 0).all()
    prob_max = predict(_ConstantLogits(), image, views=views, fusion="max_prob").probs
    expected = torch.tensor([0.26619, 0.24086, 0.49295]).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    torch.testing.assert_close(prob_max, expected, atol=1e-5, rtol=0)
    assert (prob_max.argmax(1) == 2).all()


def test_deciding_logits_are_the_deciding_stages():
    torch.manual_seed(0)
    logits = [torch.randn(2, 4, 3, 5) for _ in range(3)]
    decided = torch.randint(1, 4, (2, 3, 5), dtype=torch.uint8)
    masks = [torch.ones(2, 3, 5, dtype=torch.bool), decided >= 2, decided >= 3]
    logits = [lg * m.unsqueeze(1) for lg, m in zip(logits, masks, strict=True)]  # zero outside each mask
    probs = torch.stack(logits).gather(0, (decided.long() - 1)[None, :, None].expand(1, 2, 4, 3, 5))[0]
    output = CascadeOutput(stage_logits=logits, stage_masks=masks, decided_at_stage=decided,
                           probs=probs.softmax(dim=1))
    torch.testing.assert_close(deciding_logits(output).softmax(dim=1), output.probs)


def test_protocol_from_config_follows_the_evaluate_section(cfg):
    ev = dict(cfg["evaluate"], scales=[0.5, 0.75, 1.0], fusion="max", flip=False)
    single = protocol_from_config(ev)
    assert single.views == SINGLE_VIEW and single.crf is None
    multi = protocol_from_config(ev, multi_scale=True, crf=True)
    assert multi.views == (View(0.5), View(0.75), View(1.0)) and multi.fusion == "max"
    assert multi.describe()["crf_params"] == cfg["evaluate"]["crf"] and multi.describe()["fusion"] == "max"
    flipped = protocol_from_config(dict(ev, flip=True, fusion="mean"), multi_scale=True)
    assert len(flipped.views) == 6 and flipped.flip and flipped.fusion == "mean"
    with pytest.raises(ValueError, match="evaluate.fusion"):
        protocol_from_config(dict(ev, fusion="vote"), multi_scale=True)


def test_paper_preset_tests_with_deeplab_v2s_protocol():
    from lc.config import load_config

    ev = load_config(Path(__file__).resolve().parents[1] / "config.yaml", preset="paper")["evaluate"]
    assert ev["scales"] == [0.5, 0.75, 1.0] and ev["fusion"] == "max" and ev["flip"] is False
    assert ev["export_train_split"] == "trainval_aug" and "splits" not in ev


@pytest.mark.slow
def test_multi_scale_crf_evaluation_through_the_cli(cfg, lc_ckpt, tmp_path):
    out = tmp_path / "eval_val_ms_crf.json"
    rc = main(["evaluate", "--config", str(write_config(cfg, tmp_path)), "--preset", "test", "--checkpoint",
               str(lc_ckpt), "--dataset", "voc", "--out", str(out), "--multi-scale", "--crf",
               "--max-images", "1"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["protocol"]["scales"] == cfg["evaluate"]["scales"]
    assert report["protocol"]["flip"] is cfg["evaluate"]["flip"] and report["protocol"]["crf"] is True
    assert report["protocol"]["fusion"] == cfg["evaluate"]["fusion"]
    assert report["protocol"]["crf_params"] == cfg["evaluate"]["crf"] and report["num_images"] == 1
    assert np.asarray(report["confusion"]).sum() > 0


# --- dense CRF -------------------------------------------------------------------------------
def test_crf_keeps_shape_and_labels_valid():
    rng = np.random.default_rng(0)
    probs = rng.random((5, 24, 32)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    labels = dense_crf(image, probs, {"iterations": 3, "gaussian_sxy": 3, "gaussian_compat": 3,
                                      "bilateral_sxy": 50, "bilateral_srgb": 5, "bilateral_compat": 4})
    assert labels.shape == (24, 32) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 5


def test_crf_removes_an_isolated_label_in_a_uniform_region():
    probs = np.full((2, 16, 16), 0.4, dtype=np.float32)
    probs[0] = 0.6  # class 0 everywhere, weakly ...
    probs[:, 8, 8] = (0.4, 0.6)  # ... except one pixel
    image = np.full((16, 16, 3), 128, dtype=np.uint8)
    crf_cfg = {"iterations": 5, "gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 20,
               "bilateral_srgb": 5, "bilateral_compat": 4}
    assert probs.argmax(0)[8, 8] == 1
    assert (dense_crf(image, probs, crf_cfg) == 0).all()
    with pytest.raises(ValueError, match="evaluate.crf lacks"):
        dense_crf(image, probs, {"iterations": 1})
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), probs, crf_cfg)


# --- stage statistics ------------------------------------------------------------------------
@pytest.mark.slow
def test_stage_share_sums_to_one_and_moves_with_rho(cfg, lc_ckpt):
    model, data = load_model(lc_ckpt), build_dataset(cfg, "voc", "val")
    median = float(_stage1_confidences(model, data).median())
    rhos = [1.0, min(1.0, median * 1.05), median, 0.0]
    accs = evaluate_model(model, data, rhos)
    shares = np.array([acc.stage_share for acc in accs])
    np.testing.assert_allclose(shares.sum(1), 1.0)
    assert shares[0].tolist() == [0.0, 0.0, 1.0]  # rho = 1: nothing leaves early
    assert shares[-1].tolist() == [1.0, 0.0, 0.0]  # rho = 0: everything decided at stage 1
    assert 0.45 < shares[2, 0] < 0.75  # rho = the median confidence: about half at stage 1
    assert (np.diff(shares[:, 0]) >= 0).all()  # more pixels decided at stage 1 as rho falls
    for acc in accs:
        hist = acc.routed_label_hist
        assert (hist["stage3"] <= hist["stage2"]).all() and (hist["stage2"] <= hist["all"]).all()
    assert (accs[0].routed_label_hist["stage3"] == accs[0].routed_label_hist["all"]).all()
    assert accs[-1].routed_label_hist["stage2"].sum() == 0
    assert accs[2].routed_label_hist["stage2"].sum() < accs[2].routed_label_hist["all"].sum()


@pytest.mark.slow
def test_stage_timer_covers_layer_and_model_cascades(cfg, tmp_path):
    image = torch.zeros(1, 3, 48, 64)
    for variant in ("lc", "mc"):
        model = load_model(make_checkpoint(tmp_path / f"{variant}.pt", cfg, variant=variant, rho=1.0))
        timer = StageTimer(model, torch.device("cpu"))
        with timer:
            predict(model, image, timer=timer)
        assert timer.available and (timer.seconds > 0).all(), variant
        assert "_run_head" not in vars(model) and "_member_logits" not in vars(model)  # unpatched again


# --- lc sweep --------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_one_checkpoint_matches_evaluate_at_each_rho(cfg, lc_ckpt, tmp_path):
    out = tmp_path / "sweep_val.csv"
    rc = main(["sweep", "--config", str(write_config(cfg, tmp_path)), "--preset", "test", "--checkpoint",
               str(lc_ckpt), "--dataset", "voc", "--split", "val", "--out", str(out)])
    assert rc == 0
    table = pd.read_csv(out)
    assert list(table.columns) == SWEEP_COLUMNS
    assert table["rho"].tolist() == cfg["evaluate"]["rho_sweep"]
    np.testing.assert_allclose(table[["stage1_pct", "stage2_pct", "stage3_pct"]].sum(axis=1), 100.0)
    for row in table.to_dict("records"):
        single = run_evaluation(cfg, lc_ckpt, "voc", "val", rho=row["rho"])
        assert row["miou"] == pytest.approx(single["miou"])
        assert row["stage1_pct"] == pytest.approx(single["stage_share"][0] * 100)
    assert (table["preset"] == "test").all() and table["ms_per_image"].gt(0).all()


@pytest.mark.slow
def test_sweep_with_one_checkpoint_per_rho(cfg, tmp_path):
    paths = [make_checkpoint(tmp_path / f"rho{r}" / "checkpoint.pt", cfg, rho=r, sharpen=40.0, seed=i)
             for i, r in enumerate((1.0, 0.5))]
    assert sweep_plan(cfg, paths) == [(1.0, paths[0]), (0.5, paths[1])]
    assert sweep_plan(cfg, paths, rhos=[0.3, 0.2]) == [(0.3, paths[0]), (0.2, paths[1])]
    with pytest.raises(ValueError, match="one --rho per checkpoint"):
        sweep_plan(cfg, paths, rhos=[0.3])
    table = run_sweep(cfg, paths, "voc", "val", out=tmp_path / "sweep.csv", max_images=2)
    assert table["rho"].tolist() == [1.0, 0.5]
    assert table.loc[0, "stage3_pct"] == 100.0
    again = run_evaluation(cfg, paths[1], "voc", "val", max_images=2)
    assert table.loc[1, "miou"] == pytest.approx(again["miou"])
    assert pd.read_csv(tmp_path / "sweep.csv")["rho"].tolist() == [1.0, 0.5]
    assert table["checkpoint"].tolist() == [str(p) for p in paths]


# --- errors ----------------------------------------------------------------------------------
def test_corrupted_checkpoint_gives_a_clear_error(cfg, lc_ckpt, tmp_path, capsys):
    broken = tmp_path / "checkpoint.pt"
    broken.write_bytes(lc_ckpt.read_bytes()[:2000])
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--config", str(write_config(cfg, tmp_path)), "--preset", "test",
               "--checkpoint", str(broken), "--dataset", "voc", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and str(broken) in err and "corrupt" in err and "lc train" in err
    assert not out.exists()


def test_checkpoint_of_another_dataset_is_refused(cfg, tmp_path):
    cityscapes = make_checkpoint(tmp_path / "cs.pt", cfg, dataset="cityscapes")
    with pytest.raises(ValueError, match="19 classes but voc has 21"):
        run_evaluation(cfg, cityscapes, "voc", "val")


def test_evaluation_of_an_unlabelled_split_is_refused(cfg, lc_ckpt):
    with pytest.raises(ValueError, match="no labels"):
        run_evaluation(cfg, lc_ckpt, "voc", "test")
    assert SINGLE_VIEW == (View(1.0, False),)


# --- routing threshold: accepted when larger than rho ----------------------------------------
def test_a_score_exactly_equal_to_rho_is_not_accepted():
    from lc.models.cascade import undecided_mask

    logits = torch.tensor([[[[2.0, 0.5]], [[0.0, 0.0]]]])  # (1, 2, 1, 2): two pixels
    top = logits.softmax(dim=1).amax(dim=1)[0, 0]
    rho = float(top[0])  # exactly the first pixel's score
    assert undecided_mask(logits, rho)[0, 0].tolist() == [True, True]  # equal: passed on
    assert undecided_mask(logits, float(np.nextafter(np.float32(rho), np.float32(0))))[0, 0].tolist() == [
        False, True]  # just above the threshold: decided at this stage


def test_cascade_passes_on_pixels_whose_score_equals_rho(cfg):
    model = LayerCascade(21, "lc", cfg["model"], rho=0.5).eval()
    image = torch.zeros(1, 3, 32, 32)
    with torch.inference_mode():
        score = model(image, rho=1.0).stage_logits[0].softmax(1).amax(1)
        at_max = model(image, rho=float(score.max())).stage_masks[1]
    assert at_max[score == score.max()].all()  # the top-scoring pixels are not accepted at rho = their score


# --- which model is evaluated ----------------------------------------------------------------
@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_announced(cfg, tmp_path, caplog):
    other = dict(cfg["model"], head_channels=cfg["model"]["head_channels"] * 2)
    path = make_checkpoint(tmp_path / "other.pt", cfg, model_cfg=other)
    with caplog.at_level("WARNING", logger="lc.evaluation.loading"):
        report = run_evaluation(cfg, path, "voc", "val", max_images=1)
    model = report["model"]
    assert not model["matches_config"] and model["source"] == "checkpoint model_spec"
    assert model["differences_from_config"] == {"head_channels": {"checkpoint": other["head_channels"],
                                                                  "config": cfg["model"]["head_channels"]}}
    assert model["architecture"]["head_channels"] == other["head_channels"]
    assert str(path) in caplog.text and "head_channels" in caplog.text
    assert any("architecture differs" in note for note in report["notes"])


def test_checkpoint_whose_spec_names_another_dataset_is_refused(cfg, tmp_path):
    path = make_checkpoint(tmp_path / "voc.pt", cfg)
    payload = torch.load(path, weights_only=True)
    payload["model_spec"]["dataset"] = "cityscapes"
    save_checkpoint(path, payload)
    with pytest.raises(ValueError, match=f"{path} was trained on cityscapes, not voc"):
        run_evaluation(cfg, path, "voc", "val")


# --- sweep: (rho, checkpoint) pairs ----------------------------------------------------------
@pytest.mark.slow
def test_per_rho_sweep_takes_the_dsn_run_for_rho_one_and_names_each_checkpoint(cfg, tmp_path):
    dsn = make_checkpoint(tmp_path / "dsn" / "checkpoint.pt", cfg, variant="dsn", rho=0.985, sharpen=40.0)
    main_lc = make_checkpoint(tmp_path / "lc" / "checkpoint.pt", cfg, rho=0.9, sharpen=40.0, seed=1)
    fast = make_checkpoint(tmp_path / "lc_rho0p8" / "checkpoint.pt", cfg, rho=0.8, sharpen=40.0, seed=2)
    paths = [dsn, main_lc, fast]
    assert sweep_plan(cfg, paths) == [(1.0, dsn), (0.9, main_lc), (0.8, fast)]  # dsn stands for rho = 1
    table = run_sweep(cfg, paths, "voc", "val", max_images=1)
    assert table["checkpoint"].tolist() == [str(p) for p in paths]
    assert table["variant"].tolist() == ["dsn", "lc", "lc"]
    assert table.loc[0, "stage3_pct"] == 100.0
    with pytest.raises(ValueError, match="rho 0.9 comes twice"):
        sweep_plan(cfg, [main_lc, fast], rhos=[0.9, 0.9])


# --- progress --------------------------------------------------------------------------------
def test_progress_is_plain_log_lines_when_stderr_is_not_a_terminal(caplog, capsys, monkeypatch):
    import sys

    from lc.evaluation.progress import progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # also under `pytest -s` at a terminal

    with caplog.at_level("INFO", logger="lc.evaluation.progress"):
        assert list(progress(range(5), 5, "evaluate voc val", log_every=2)) == list(range(5))
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        "evaluate voc val: 2/5 img", "evaluate voc val: 4/5 img", "evaluate voc val: 5/5 img done"]
    assert "\r" not in capsys.readouterr().err


# --- Table 6 times the evaluation's own inference ---------------------------------------------
@pytest.mark.slow
def test_table6_runs_the_evaluations_protocols(cfg, monkeypatch):
    import lc.bench.table6 as table6
    from lc.bench.models import BenchSetup

    ev = dict(cfg["evaluate"], scales=[0.5, 1.0], fusion="max", flip=False)
    bench_cfg = copy.deepcopy(cfg)
    bench_cfg["evaluate"] = ev
    bench_cfg["bench"].update(image_size=32, warmup=0, runs=1, mask_sets=1)
    import lc.evaluation.inference as inference

    assert table6.run_protocol is inference.run_protocol  # the evaluation's function, not a copy
    seen = []

    def spy(model, images, protocol, **kwargs):
        seen.append(protocol)
        return inference.run_protocol(model, images, protocol, **kwargs)

    monkeypatch.setattr(table6, "run_protocol", spy)
    from lc.report.paper import load_paper_table

    df = table6.run_table6_bench(BenchSetup.from_config(bench_cfg, device="cpu",
                                                        paper_table1=load_paper_table(1)))
    expected = [protocol for _, protocol in table6.table6_protocols(ev)]
    assert expected == [protocol_from_config(ev), protocol_from_config(ev, multi_scale=True),
                        protocol_from_config(ev, multi_scale=True, crf=True)]
    assert {repr(p) for p in seen} == {repr(p) for p in expected}
    assert df["fusion"].tolist()[1:] == ["max", "max"] and df["scales"].tolist() == ["1", "0.5 1", "0.5 1"]
    assert df["crf"].tolist() == [False, False, True]
