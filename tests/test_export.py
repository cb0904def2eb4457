"""lc.evaluation.export: test-server archives for VOC (comp6 tar.gz) and Cityscapes (labelIds zip)."""

from __future__ import annotations

import copy
import io
import json
import tarfile
import zipfile

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label
from helpers import make_checkpoint, write_config
from PIL import Image

from lc.cli.main import main
from lc.data import VOC_PALETTE, build_dataset, trainid_to_labelid
from lc.evaluation.export import VOC_MEMBER, cityscapes_member, run_export, summary_path
from lc.evaluation.inference import predict
from lc.training.checkpoint import load_model


@pytest.fixture(scope="module")
def cfg(prepared_test_cfg):
    return copy.deepcopy(prepared_test_cfg)


def _predicted(cfg, checkpoint, dataset) -> dict[str, np.ndarray]:
    model, data = load_model(checkpoint), build_dataset(cfg, dataset, "test")
    return {item["name"]: predict(model, item["image"][None]).labels[0].numpy()
            for item in (data[i] for i in range(len(data)))}


@pytest.mark.slow
def test_voc_archive_layout_names_and_values(cfg, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "voc.pt", cfg, "voc", sharpen=40.0)
    out = tmp_path / "export" / "voc_test_comp6.tar.gz"
    rc = main(["export", "--config", str(write_config(cfg, tmp_path)), "--preset", "test", "--checkpoint",
               str(checkpoint), "--dataset", "voc", "--out", str(out)])
    assert rc == 0
    expected = _predicted(cfg, checkpoint, "voc")
    assert len(expected) == cfg["data"]["synthetic_sizes"]["voc_test"]
    with tarfile.open(out, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert sorted(members) == sorted(VOC_MEMBER.format(name=n) for n in expected)
    assert all(n.startswith("results/VOC2012/Segmentation/comp6_test_cls/") for n in members)
    for name, labels in expected.items():
        png = Image.open(io.BytesIO(members[VOC_MEMBER.format(name=name)]))
        assert png.mode == "P"
        np.testing.assert_array_equal(np.asarray(png.getpalette()[: 21 * 3]), VOC_PALETTE[:21].ravel())
        values = np.asarray(png)
        assert values.shape == labels.shape and values.max() <= 20
        np.testing.assert_array_equal(values, labels)
    summary = json.loads(summary_path(out).read_text())
    assert summary_path(out).name == "voc_test_comp6.json"
    assert summary["num_images"] == len(expected) and summary["split"] == "test"
    assert sum(summary["predicted_pixels"].values()) == sum(v.size for v in expected.values())

    again = run_export(cfg, checkpoint, "voc", tmp_path / "again.tar.gz")  # byte-identical re-export
    assert (tmp_path / "again.tar.gz").read_bytes() == out.read_bytes()
    assert again["num_images"] == len(expected)


@pytest.mark.slow
def test_cityscapes_archive_holds_valid_label_ids(cfg, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "cs.pt", cfg, "cityscapes", sharpen=40.0)
    out = tmp_path / "cityscapes_test.zip"
    summary = run_export(cfg, checkpoint, "cityscapes", out)
    expected = _predicted(cfg, checkpoint, "cityscapes")
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        assert sorted(names) == sorted(cityscapes_member(n) for n in expected)
        for name, train_ids in expected.items():
            city, seq, frame = name.split("_")
            member = f"{city}/{city}_{seq}_{frame}_pred_labelIds.png"
            values = np.asarray(Image.open(io.BytesIO(archive.read(member))))
            assert values.shape == train_ids.shape
            np.testing.assert_array_equal(values, trainid_to_labelid(train_ids))
            assert all(0 <= id2label[int(v)].trainId < 19 for v in np.unique(values))
    assert summary["num_images"] == len(expected) == cfg["data"]["synthetic_sizes"]["cityscapes_test"]
    assert summary_path(out).exists()


def test_cityscapes_names_must_follow_the_server_pattern():
    assert cityscapes_member("berlin_000123_000019") == "berlin/berlin_000123_000019_pred_labelIds.png"
    with pytest.raises(ValueError, match="<city>_<seq:6>_<frame:6>"):
        cityscapes_member("berlin_12_19")


def test_an_empty_split_is_refused(cfg, tmp_path):
    empty = copy.deepcopy(cfg)
    empty["data"]["root"] = str(tmp_path / "data")
    (tmp_path / "data" / "cityscapes").mkdir(parents=True)
    (tmp_path / "data" / "cityscapes" / "test.txt").write_text("")
    checkpoint = make_checkpoint(tmp_path / "cs.pt", cfg, "cityscapes")
    with pytest.raises(ValueError, match="has no images"):
        run_export(empty, checkpoint, "cityscapes", tmp_path / "cityscapes_test.zip")
    assert not (tmp_path / "cityscapes_test.zip").exists()


@pytest.mark.slow
def test_wrong_archive_type_and_failures_leave_nothing_behind(cfg, tmp_path, monkeypatch):
    checkpoint = make_checkpoint(tmp_path / "voc.pt", cfg, "voc")
    with pytest.raises(ValueError, match=r"\.tar\.gz"):
        run_export(cfg, checkpoint, "voc", tmp_path / "voc.zip")
    calls = []

    def failing_encode(dataset, name, labels):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return VOC_MEMBER.format(name=name), b"png"

    monkeypatch.setattr("lc.evaluation.export._encode", failing_encode)
    out = tmp_path / "out" / "voc_test_comp6.tar.gz"
    with pytest.raises(RuntimeError, match="disk full"):
        run_export(cfg, checkpoint, "voc", out)
    assert list(out.parent.iterdir()) == []  # no archive, no temporary file, no summary


# --- which split trained the export model (evaluate.export_train_split) ----------------------
def test_summary_names_the_training_split_read_from_train_done(cfg, tmp_path):
    run = tmp_path / "runs" / "voc" / "lc"
    checkpoint = make_checkpoint(run / "checkpoint.pt", cfg, "voc")
    (run / "train_done.json").write_text(json.dumps({"iterations": 4, "split": "trainval_aug"}))
    paper_like = copy.deepcopy(cfg)
    paper_like["evaluate"]["export_train_split"] = "trainval_aug"
    summary = run_export(paper_like, checkpoint, "voc", tmp_path / "voc_test_comp6.tar.gz")
    assert summary["train_split"] == "trainval_aug"
    assert summary["training"]["source"].startswith(str(run / "train_done.json"))
    assert json.loads(summary_path(tmp_path / "voc_test_comp6.tar.gz").read_text())["train_split"] == (
        "trainval_aug")


@pytest.mark.slow
def test_a_model_trained_on_another_split_than_the_config_says_is_refused(cfg, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "run" / "checkpoint.pt", cfg, "voc")  # records no split
    paper_like = copy.deepcopy(cfg)
    paper_like["evaluate"]["export_train_split"] = "trainval_aug"
    out = tmp_path / "voc_test_comp6.tar.gz"
    with pytest.raises(ValueError, match=r"on train_aug .* evaluate.export_train_split is trainval_aug"):
        run_export(paper_like, checkpoint, "voc", out)
    assert not out.exists() and not summary_path(out).exists()
    summary = run_export(cfg, checkpoint, "voc", out)  # the test preset's train_aug: assumed, and said so
    assert summary["train_split"] == "train_aug" and "assumed" in summary["training"]["source"]
