"""The prepared data sets as torch Datasets: `build_dataset(cfg, dataset, split, train)`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lc.data.io import ARCHIVE_FIX, check_label_values, read_index_png, read_rgb, read_sample_list
from lc.data.labels import IGNORE_INDEX, NUM_CLASSES
from lc.data.paths import canonical_split, data_root, prepared_list_files
from lc.data.transforms import TrainTransform, normalize


class SegmentationDataset(Dataset):
    """Samples of a prepared list file (`name image [label]`, paths relative to `root`).

    Items are dicts: "image" float32 (3, H, W) normalised, "label" int64 (H, W) with 255 = ignore
    (only when the list has labels), "name" the image id used for export.
    """

    def __init__(self, root: str | Path, list_file: str | Path, num_classes: int,
                 transform: TrainTransform | None = None):
        self.root = Path(root)
        self.list_file = Path(list_file)
        self.num_classes = num_classes
        self.transform = transform
        self.samples = read_sample_list(self.list_file)
        self.has_labels = bool(self.samples) and all(len(row) == 3 for row in self.samples)
        if transform is not None and not self.has_labels:
            raise ValueError(f"{self.list_file} has no labels; training transforms need labelled samples")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def names(self) -> list[str]:
        return [row[0] for row in self.samples]

    def __getitem__(self, index: int) -> dict:
        row = self.samples[index]
        image_path = self.root / row[1]
        image = normalize(read_rgb(image_path, ARCHIVE_FIX))
        item: dict = {"name": row[0]}
        if self.has_labels:
            label_path = self.root / row[2]
            label_np = read_index_png(label_path)
            if label_np.shape != tuple(image.shape[1:]):
                raise ValueError(f"{label_path}: label size {label_np.shape} differs from image "
                                 f"{image_path} size {tuple(image.shape[1:])}")
            check_label_values(label_np, self.num_classes, label_path, IGNORE_INDEX)
            label = torch.from_numpy(label_np.astype(np.int64))
            if self.transform is not None:
                image, label = self.transform(image, label)
            item["label"] = label
        item["image"] = image
        return item


def build_dataset(cfg: dict, dataset: str, split: str, train: bool = False) -> SegmentationDataset:
    """Prepared `dataset` ("voc" | "cityscapes"), `split` ("train" | "val" | "test"; VOC train = train_aug,
    also VOC "trainval_aug" = train_aug + val; "train_aug" is accepted for "train").

    `train=True` applies random scale (train.scale_range), crop (train.crop_size) and flip; otherwise
    every item is the full image.
    """
    split = canonical_split(dataset, split)
    lists = prepared_list_files(cfg, dataset)
    if split not in lists:
        raise FileNotFoundError(
            f"{dataset} has no {split} split in this configuration (VOC test needs the voc2012_test "
            "archive: set data.archives.voc2012_test.url or md5)"
        )
    list_file = lists[split]
    if not list_file.exists():
        raise FileNotFoundError(f"{list_file} is missing: prepare the data set first with "
                                f"`lc prepare {dataset} --preset {cfg['preset']}`")
    transform = None
    if train:
        transform = TrainTransform(cfg["train"]["crop_size"], cfg["train"]["scale_range"])
    return SegmentationDataset(data_root(cfg), list_file, NUM_CLASSES[dataset], transform)
