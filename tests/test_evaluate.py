"""lc.evaluation: evaluate, inference, crf and sweep on the test preset's synthetic VOC (tiny networks)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from lc.cli.main import main
from lc.data import NUM_CLASSES, build_dataset
from lc.evaluation.crf import dense_crf
from lc.evaluation.evaluate import evaluate_model, run_evaluation
from lc.evaluation.inference import SINGLE_VIEW, StageTimer, View, predict, protocol_views, reference_view
from lc.evaluation.metrics import confusion_matrix, iou_from_confusion
from lc.evaluation.sweep import SWEEP_COLUMNS, run_sweep, sweep_plan
from lc.models.cascade import LayerCascade
from lc.models.mc import ModelCascade
from lc.training.checkpoint import load_model, make_model_spec, save_checkpoint


def make_checkpoint(path: Path, cfg: dict, dataset: str = "voc", variant: str = "lc", rho: float = 0.9,
                    sharpen: float = 1.0, seed: int = 0) -> Path:
    """A randomly initialised model saved as `lc train` saves it; `sharpen` scales the heads' logits
    (a random tiny net is unconfident everywhere; sharper logits spread the confidences)."""
    torch.manual_seed(seed)
    kind = "mc" if variant == "mc" else "cascade"
    num_classes = NUM_CLASSES[dataset]
    model = (ModelCascade(num_classes, cfg["model"], rho=rho) if kind == "mc"
             else LayerCascade(num_classes, variant, cfg["model"], rho=rho))
    with torch.no_grad():  # heads read features, not their (image-independent) bias
        for name, param in model.named_parameters():
            if ".classifier.weight" in f".{name}":
                param.mul_(sharpen)
            elif ".classifier.bias" in f".{name}":
                param.zero_()
    spec = make_model_spec(kind, variant, num_classes, cfg["model"], rho, dataset=dataset)
    save_checkpoint(path, {"model": model.state_dict(), "model_spec": spec, "iteration": 0})
    return path


def write_config(cfg: dict, folder: Path) -> Path:
    """The resolved config as Snakemake passes it (`--config <file> --preset test`)."""
    path = folder / "config.resolved.yaml"
    path.write_text(yaml.safe_dump(dict(cfg, presets={cfg["preset"]: {}})))
    return path


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
def test_evaluate_iou_equals_lc_metrics_on_the_same_predictions(cfg, lc_ckpt, tmp_path):
    out = tmp_path / "eval_val.json"
    rc = main(["evaluate", "--config", str(write_config(cfg, tmp_path)), "--preset", "test",
               "--checkpoint", str(lc_ckpt), "--dataset", "voc", "--split", "val", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())

    # independent recomputation: stride-8 probs upsampled bilinearly to the label size, argmax
    model, data = load_model(lc_ckpt), build_dataset(cfg, "voc", "val")
    cm = np.zeros((21, 21), dtype=np.int64)
    with torch.inference_mode():
        for i in range(len(data)):
            image, label = data[i]["image"][None], data[i]["label"]
            probs = F.interpolate(model(image).probs, size=label.shape, mode="bilinear", align_corners=False)
            cm += confusion_matrix(probs.argmax(1)[0], label, 21)
    iou = iou_from_confusion(cm) * 100
    assert report["confusion"] == cm.tolist()
    assert [v is None for v in report["per_class_iou"]] == np.isnan(iou).tolist()
    np.testing.assert_allclose([v for v in report["per_class_iou"] if v is not None], iou[~np.isnan(iou)])
    assert report["miou"] == pytest.approx(np.nanmean(iou))
    assert report["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum() * 100)
    assert report["num_images"] == len(data) and report["rho"] == 0.9 and report["variant"] == "lc"
    assert report["protocol"] == {**report["protocol"], "scales": [1.0], "flip": False, "crf": False}
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


def test_views_are_resized_mirrored_back_and_averaged(cfg, lc_ckpt):
    model = load_model(lc_ckpt)
    image = build_dataset(cfg, "voc", "val")[0]["image"][None]
    size = image.shape[-2:]
    mirrored = predict(model, image, views=[View(1.0, True)]).probs
    direct = predict(model, image.flip(-1)).probs.flip(-1)
    torch.testing.assert_close(mirrored, direct)

    views = protocol_views([0.75, 1.0], flip=True)
    assert views == [View(0.75), View(0.75, True), View(1.0), View(1.0, True)]
    assert reference_view(views) == View(1.0)
    expected = torch.zeros_like(mirrored)
    with torch.inference_mode():
        for view in views:
            x = F.interpolate(image, scale_factor=view.scale, mode="bilinear", align_corners=False)
            x = x.flip(-1) if view.flip else x
            p = F.interpolate(model(x).probs, size=size, mode="bilinear", align_corners=False)
            expected += (p.flip(-1) if view.flip else p) / len(views)
    averaged = predict(model, image, views=views)
    torch.testing.assert_close(averaged.probs, expected)
    assert averaged.view == View(1.0)
    torch.testing.assert_close(averaged.probs.sum(1), torch.ones(1, *size))


def test_multi_scale_crf_evaluation_through_the_cli(cfg, lc_ckpt, tmp_path):
    out = tmp_path / "eval_val_ms_crf.json"
    rc = main(["evaluate", "--config", str(write_config(cfg, tmp_path)), "--preset", "test", "--checkpoint",
               str(lc_ckpt), "--dataset", "voc", "--out", str(out), "--multi-scale", "--crf",
               "--max-images", "1"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["protocol"]["scales"] == cfg["evaluate"]["scales"]
    assert report["protocol"]["flip"] is True and report["protocol"]["crf"] is True
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


def test_sweep_with_one_checkpoint_per_rho(cfg, tmp_path):
    paths = [make_checkpoint(tmp_path / f"rho{r}" / "checkpoint.pt", cfg, rho=r, sharpen=40.0, seed=i)
             for i, r in enumerate((1.0, 0.5))]
    assert sweep_plan(cfg, paths) == [(paths[0], [1.0]), (paths[1], [0.5])]
    assert sweep_plan(cfg, paths, rhos=[0.3, 0.2]) == [(paths[0], [0.3]), (paths[1], [0.2])]
    with pytest.raises(ValueError, match="one --rho per checkpoint"):
        sweep_plan(cfg, paths, rhos=[0.3])
    table = run_sweep(cfg, paths, "voc", "val", out=tmp_path / "sweep.csv", max_images=2)
    assert table["rho"].tolist() == [1.0, 0.5]
    assert table.loc[0, "stage3_pct"] == 100.0
    again = run_evaluation(cfg, paths[1], "voc", "val", max_images=2)
    assert table.loc[1, "miou"] == pytest.approx(again["miou"])
    assert pd.read_csv(tmp_path / "sweep.csv")["rho"].tolist() == [1.0, 0.5]


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
