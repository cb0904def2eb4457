"""Where data files live below `data.root`.

```
<data.root>/archives/<filename>          downloaded, verified archives (`lc download`)
<data.root>/weights/inception_resnet_v2.pth  ImageNet weights (`lc weights`)
<data.root>/raw/<archive key>/           their extracted contents (`lc prepare`)
<data.root>/voc_aug/SegmentationClassAug/<id>.png, train_aug.txt, trainval_aug.txt, val.txt[, test.txt]
<data.root>/cityscapes/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png, train.txt, val.txt, test.txt
<data.root>/weights/inception_resnet_v2.pth   ImageNet weights (`lc weights`, lc.data.weights)
```

The list files are the "prepared" marker: `lc prepare` deletes them first and writes them last.
"""

from __future__ import annotations

from pathlib import Path

DATASETS = ("voc", "cityscapes")
SPLITS = ("train", "val", "test", "trainval_aug")
# Other names accepted for a split (`lc train --split train_aug`): VOC's train split is train_aug.
SPLIT_ALIASES = {"train_aug": "train"}

# The list file each split of each prepared data set is read from (VOC trains on train_aug;
# trainval_aug = train_aug + VOC val, DeepLab's fine-tuning set for the test-server submission).
_LIST_NAMES = {
    "voc": {"train": "train_aug.txt", "val": "val.txt", "trainval_aug": "trainval_aug.txt",
            "test": "test.txt"},
    "cityscapes": {"train": "train.txt", "val": "val.txt", "test": "test.txt"},
}
PREPARED_DIRS = {"voc": "voc_aug", "cityscapes": "cityscapes"}


def data_root(cfg: dict) -> Path:
    return Path(cfg["data"]["root"])


def weights_path(cfg: dict) -> Path:
    """Where `lc weights` stores timm's ImageNet weights of the backbone (model.weights_file; IRNet:
    inception_resnet_v2.pth)."""
    return data_root(cfg) / "weights" / cfg["model"].get("weights_file", "inception_resnet_v2.pth")


def archive_spec(cfg: dict, key: str) -> dict:
    archives = cfg["data"].get("archives", {})
    if key not in archives:
        raise ValueError(f"unknown archive {key!r}; config.yaml lists {sorted(archives)} under data.archives")
    return archives[key]


def archive_path(cfg: dict, key: str) -> Path:
    """The default location of a downloaded archive: <data.root>/archives/<filename>."""
    return data_root(cfg) / "archives" / archive_spec(cfg, key)["filename"]


def extracted_dir(cfg: dict, key: str) -> Path:
    return data_root(cfg) / "raw" / key


def prepared_dir(cfg: dict, dataset: str) -> Path:
    _check_dataset(dataset)
    return data_root(cfg) / PREPARED_DIRS[dataset]


def voc_test_available(cfg: dict) -> bool:
    """VOC test images are used when the archive is synthetic or configured (url or md5 set)."""
    spec = cfg["data"].get("archives", {}).get("voc2012_test")
    if spec is None:
        return False
    return bool(cfg["data"].get("synthetic")) or bool(spec.get("url") or spec.get("md5"))


def prepared_list_files(cfg: dict, dataset: str) -> dict[str, Path]:
    """split -> list file that `lc prepare <dataset>` writes (VOC test only when available)."""
    _check_dataset(dataset)
    names = _LIST_NAMES[dataset]
    splits = [s for s in names if not (dataset == "voc" and s == "test" and not voc_test_available(cfg))]
    return {split: prepared_dir(cfg, dataset) / names[split] for split in splits}


def canonical_split(dataset: str, split: str) -> str:
    """`split` or its alias resolved ("train_aug" -> "train"); a clear error if `dataset` lacks it."""
    _check_dataset(dataset)
    resolved = SPLIT_ALIASES.get(split, split)
    if resolved not in _LIST_NAMES[dataset]:
        known = sorted(set(_LIST_NAMES[dataset]) | set(SPLIT_ALIASES))
        raise ValueError(f"unknown split {split!r} for {dataset}; expected one of {known}")
    return resolved


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
