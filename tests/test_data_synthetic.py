"""Synthetic archives -> download from the mirror -> prepare -> build_dataset, on the test preset."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lc.config import load_config
from lc.data import NUM_CLASSES, build_dataset, prepared_list_files
from lc.data.cityscapes import prepare_cityscapes
from lc.data.download import MD5SUMS_NAME, fetch_archive
from lc.data.io import md5_file, read_id_list
from lc.data.synthetic import cityscapes_names, make_synthetic_mirror, voc_id_sets
from lc.data.voc import prepare_voc

CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
ARCHIVES = ("voc2012_trainval", "voc2012_test", "sbd", "cityscapes_gtfine", "cityscapes_leftimg8bit")


def _cfg(root: Path) -> dict:
    return load_config(CONFIG, preset="test",
                       overrides={"data": {"root": str(root), "mirror": str(root / "mirror")}})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("data"))
    sums = make_synthetic_mirror(cfg)
    for key in ARCHIVES:
        fetch_archive(cfg, key)
    prepare_voc(cfg)
    prepare_cityscapes(cfg)
    return cfg, sums


def test_mirror_is_deterministic_and_has_md5sums(prepared, tmp_path):
    cfg, sums = prepared
    mirror = Path(cfg["data"]["mirror"])
    listed = dict(reversed(line.split()) for line in (mirror / MD5SUMS_NAME).read_text().splitlines())
    assert listed == sums
    assert all(md5_file(mirror / name) == md5 for name, md5 in sums.items())
    assert make_synthetic_mirror(_cfg(tmp_path)) == sums  # byte for byte the same on a second run


def test_archives_have_the_real_layouts(prepared):
    cfg = prepared[0]
    mirror = Path(cfg["data"]["mirror"])
    archives = cfg["data"]["archives"]
    with tarfile.open(mirror / archives["voc2012_trainval"]["filename"]) as tar:
        names = set(tar.getnames())
    assert "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt" in names
    assert any(n.startswith("VOCdevkit/VOC2012/SegmentationClass/") for n in names)
    with tarfile.open(mirror / archives["sbd"]["filename"], "r:gz") as tar:
        assert "benchmark_RELEASE/dataset/val.txt" in tar.getnames()
    with zipfile.ZipFile(mirror / archives["cityscapes_gtfine"]["filename"]) as zf:
        names = set(zf.namelist())
        city, name = cityscapes_names(cfg["data"]["synthetic_sizes"])["train"][0]
        stem = f"gtFine/train/{city}/{name}_gtFine"
        for suffix in ("labelIds.png", "instanceIds.png", "color.png", "polygons.json"):
            assert f"{stem}_{suffix}" in names
        polygons = json.loads(zf.read(f"{stem}_polygons.json"))
        assert {"imgHeight", "imgWidth", "objects"} <= set(polygons)
        assert {o["label"] for o in polygons["objects"]} >= {"sky", "road"}


def test_voc_label_png_has_boundary_band(prepared):
    cfg = prepared[0]
    root = Path(cfg["data"]["root"]) / "raw" / "voc2012_trainval" / "VOCdevkit" / "VOC2012"
    image_id = read_id_list(root / "ImageSets" / "Segmentation" / "train.txt")[0]
    with Image.open(root / "SegmentationClass" / f"{image_id}.png") as png:
        assert png.mode == "P"
        label = np.asarray(png)
    assert 255 in label and (label[(label != 255)] < 21).all()


def test_train_aug_list_rule_and_counts(prepared):
    cfg = prepared[0]
    raw = Path(cfg["data"]["root"]) / "raw"
    voc_sets = raw / "voc2012_trainval" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    sbd = raw / "sbd" / "benchmark_RELEASE" / "dataset"
    voc_train, voc_val = set(read_id_list(voc_sets / "train.txt")), set(read_id_list(voc_sets / "val.txt"))
    sbd_all = set(read_id_list(sbd / "train.txt")) | set(read_id_list(sbd / "val.txt"))
    assert sbd_all & voc_val and sbd_all & voc_train  # the overlaps that make the rule matter
    expected = (sbd_all | voc_train) - voc_val
    lists = prepared_list_files(cfg, "voc")
    train_names = read_id_list(lists["train"])
    assert lists["train"].name == "train_aug.txt"
    assert set(train_names) == expected and len(train_names) == len(expected)
    assert set(read_id_list(lists["val"])) == voc_val
    # trainval_aug: train_aug + VOC val (the fine-tuning set for the test-server submission)
    trainval_names = read_id_list(lists["trainval_aug"])
    assert lists["trainval_aug"].name == "trainval_aug.txt"
    assert sorted(trainval_names) == trainval_names and set(trainval_names) == expected | voc_val
    assert len(trainval_names) == len(expected) + len(voc_val)
    assert len(build_dataset(cfg, "voc", "trainval_aug")) == len(trainval_names)
    assert len(build_dataset(cfg, "voc", "train_aug")) == len(train_names)  # alias of "train"
    with pytest.raises(ValueError, match="unknown split 'trainval_aug' for cityscapes"):
        build_dataset(cfg, "cityscapes", "trainval_aug")
    sizes = cfg["data"]["synthetic_sizes"]
    ids = voc_id_sets(sizes)
    assert len(read_id_list(lists["test"])) == len(ids["voc_test"]) == sizes["voc_test"]


@pytest.mark.parametrize("dataset", ["voc", "cityscapes"])
def test_prepared_sets_load_through_build_dataset(prepared, dataset):
    cfg = prepared[0]
    sizes = cfg["data"]["synthetic_sizes"]
    lists = prepared_list_files(cfg, dataset)
    assert set(lists) == {"train", "val", "test"} | ({"trainval_aug"} if dataset == "voc" else set())
    for split, list_file in lists.items():
        rows = [line.split() for line in list_file.read_text().splitlines()]
        data = build_dataset(cfg, dataset, split)
        assert len(data) == len(rows) > 0
        images = {r[1] for r in rows}
        assert all((Path(cfg["data"]["root"]) / p).exists() for p in images) and len(images) == len(rows)
        if dataset == "cityscapes":
            assert len(rows) == sizes[f"cityscapes_{split}"]
        if split == "test":
            assert all(len(r) == 2 for r in rows)
        else:
            labels = {r[2] for r in rows}
            assert len(labels) == len(rows) and all((Path(cfg["data"]["root"]) / p).exists() for p in labels)
        item = data[0]
        assert item["name"] == rows[0][0]
        assert item["image"].dtype == torch.float32 and item["image"].shape[0] == 3
        assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
        if split == "test":
            assert "label" not in item
        else:
            label = item["label"]
            assert label.dtype == torch.int64 and label.shape == item["image"].shape[1:]
            values = set(label.unique().tolist())
            assert values <= set(range(NUM_CLASSES[dataset])) | {255} and len(values - {255}) >= 2


def test_cityscapes_train_ids_match_label_ids(prepared):
    cfg = prepared[0]
    root = Path(cfg["data"]["root"])
    name, image_rel, label_rel = (root / "cityscapes" / "train.txt").read_text().split("\n")[0].split()
    city = name.split("_")[0]
    label_ids = np.asarray(Image.open(root / "raw" / "cityscapes_gtfine" / "gtFine" / "train" / city
                                      / f"{name}_gtFine_labelIds.png"))
    train_ids = np.asarray(Image.open(root / label_rel))
    assert label_rel.endswith("_gtFine_labelTrainIds.png")
    assert (train_ids[label_ids == 7] == 0).all() and (train_ids[label_ids == 23] == 10).all()  # road, sky
    assert (train_ids[label_ids == 1] == 255).all() and (label_ids == 1).any()  # ego vehicle is void


def test_training_items_are_cropped(prepared):
    cfg = prepared[0]
    crop = cfg["train"]["crop_size"]
    data = build_dataset(cfg, "cityscapes", "train", train=True)
    torch.manual_seed(0)
    item = data[0]
    assert item["image"].shape == (3, crop, crop) and item["label"].shape == (crop, crop)
    with pytest.raises(ValueError, match="no labels"):
        build_dataset(cfg, "voc", "test", train=True)


def test_unprepared_dataset_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="lc prepare voc --preset test"):
        build_dataset(_cfg(tmp_path), "voc", "val")
