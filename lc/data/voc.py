"""PASCAL VOC 2012 + SBD -> the VOC-aug set (`lc prepare voc`).

train_aug = SBD train + SBD val + VOC train, minus VOC val (10,582 images on the real data);
val = VOC val (1,449); trainval_aug = train_aug + val (12,031), DeepLab's fine-tuning set for the
test-server submission. Labels come from VOC's SegmentationClass PNG where one exists (it has the
255 boundary band and wins) and from SBD's dataset/cls/<id>.mat (GTcls.Segmentation) otherwise,
and are written as single-channel palette PNGs to <data.root>/voc_aug/SegmentationClassAug/.
Images are read in place from the extracted archives. The list files mean "prepared": they are
deleted first and written last, so a failed run leaves none.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from scipy.io.matlab import MatReadError
from tqdm import tqdm

from lc.data.errors import DataError
from lc.data.extract import extract_archive
from lc.data.io import (
    ARCHIVE_FIX,
    check_label_values,
    image_size,
    load_image,
    read_id_list,
    remove_files,
    write_sample_list,
    write_voc_label_png,
)
from lc.data.labels import IGNORE_INDEX, NUM_CLASSES, voc_rgb_to_index
from lc.data.paths import data_root, prepared_dir, prepared_list_files, voc_test_available

log = logging.getLogger(__name__)

VOC_NUM_CLASSES = NUM_CLASSES["voc"]


def read_voc_label(path: str | Path) -> np.ndarray:
    """A VOC label PNG as uint8 class indices (255 = boundary/ignore).

    Single-channel PNGs (palette or grey) are read as indices; an RGB(A) colour label is mapped
    through the VOC palette and refused if any colour is off the palette.
    """
    path = Path(path)
    with load_image(path, ARCHIVE_FIX) as image:
        mode = image.mode
        if mode in ("RGB", "RGBA"):
            index, off_palette = voc_rgb_to_index(np.asarray(image.convert("RGB")))
            if off_palette.any():
                rgb = np.asarray(image.convert("RGB"))[off_palette]
                examples = sorted({tuple(int(v) for v in c) for c in rgb[:1000]})[:5]
                raise ValueError(
                    f"{path}: colour label with {int(off_palette.sum())} pixels off the VOC palette "
                    f"(e.g. RGB {examples}); save the label as a single-channel index PNG or with "
                    "exact VOC palette colours"
                )
            label = index
        elif mode in ("P", "L"):
            label = np.asarray(image)
        elif mode in ("I", "I;16"):
            label = np.asarray(image).astype(np.int64)
        else:
            raise ValueError(f"{path}: unsupported label image mode {mode}; expected an index PNG")
    check_label_values(label, VOC_NUM_CLASSES, path, IGNORE_INDEX)
    return label.astype(np.uint8)


def read_sbd_label(path: str | Path) -> np.ndarray:
    """GTcls.Segmentation of an SBD dataset/cls/<id>.mat as uint8 class indices."""
    path = Path(path)
    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    except (MatReadError, ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable MATLAB file ({exc}); the SBD archive may be "
                         "corrupt") from exc
    gt = mat.get("GTcls")
    segmentation = getattr(gt, "Segmentation", None)
    if segmentation is None:
        raise ValueError(f"{path}: no GTcls.Segmentation field; is this an SBD dataset/cls file?")
    label = np.asarray(segmentation)
    if label.ndim != 2:
        raise ValueError(f"{path}: GTcls.Segmentation has shape {label.shape}, expected (H, W)")
    check_label_values(label, VOC_NUM_CLASSES, path, IGNORE_INDEX)
    return label.astype(np.uint8)


def train_aug_ids(sbd_train: list[str], sbd_val: list[str], voc_train: list[str],
                  voc_val: list[str]) -> list[str]:
    """The train_aug rule: (SBD train + SBD val + VOC train) minus VOC val, sorted."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def _image_path(image_id: str, voc_dir: Path, sbd_dir: Path) -> Path:
    for candidate in (voc_dir / "JPEGImages" / f"{image_id}.jpg", sbd_dir / "img" / f"{image_id}.jpg"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"image {image_id}.jpg is in neither {voc_dir / 'JPEGImages'} nor "
                            f"{sbd_dir / 'img'}; the archives are incomplete, download them again")


def _require_dir(path: Path, archive_key: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: the {archive_key} archive does not have the expected "
                                "layout; delete it and download again")
    return path


def prepare_voc(cfg: dict, verify: bool = False) -> dict[str, Path]:
    """Extract VOC 2012 and SBD, merge their labels, write the lists; returns split -> list file.

    verify: hash every archive again, trusting no cached digest (`lc prepare --verify`)."""
    root = data_root(cfg)
    lists = prepared_list_files(cfg, "voc")
    remove_files(list(lists.values()))
    voc_dir = _require_dir(extract_archive(cfg, "voc2012_trainval", verify) / "VOCdevkit" / "VOC2012",
                           "voc2012_trainval")
    sbd_dir = _require_dir(extract_archive(cfg, "sbd", verify) / "benchmark_RELEASE" / "dataset", "sbd")
    voc_sets = voc_dir / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_id_list(voc_sets / "train.txt"), read_id_list(voc_sets / "val.txt")
    sbd_train, sbd_val = read_id_list(sbd_dir / "train.txt"), read_id_list(sbd_dir / "val.txt")
    splits = {"train": train_aug_ids(sbd_train, sbd_val, voc_train, voc_val), "val": sorted(voc_val)}
    for split, ids in splits.items():
        if not ids:
            raise DataError(f"the VOC {lists[split].stem} split is empty: the id lists in {voc_sets} and "
                            f"{sbd_dir} hold no images for it; the archives are incomplete, download them "
                            "again")

    label_dir = prepared_dir(cfg, "voc") / "SegmentationClassAug"
    rows: dict[str, list[tuple[str, ...]]] = {}
    for split, ids in splits.items():
        rows[split] = []
        for image_id in tqdm(ids, desc=f"prepare voc {split}", unit="img", file=sys.stderr, leave=False,
                             disable=not sys.stderr.isatty()):
            voc_png = voc_dir / "SegmentationClass" / f"{image_id}.png"
            label_source = voc_png if voc_png.exists() else sbd_dir / "cls" / f"{image_id}.mat"
            if not label_source.exists():
                raise FileNotFoundError(f"no label for {image_id}: neither {voc_png} nor {label_source} "
                                        "exists")
            label = read_voc_label(voc_png) if voc_png.exists() else read_sbd_label(label_source)
            image_path = _image_path(image_id, voc_dir, sbd_dir)
            height, width = image_size(image_path)
            if label.shape != (height, width):
                raise ValueError(f"{label_source}: label size {label.shape} differs from image {image_path} "
                                 f"size {(height, width)}; the archive is inconsistent, download it again")
            target = label_dir / f"{image_id}.png"
            write_voc_label_png(target, label)
            rows[split].append((image_id, os.path.relpath(image_path, root), os.path.relpath(target, root)))
    rows["trainval_aug"] = sorted(rows["train"] + rows["val"])
    if voc_test_available(cfg):
        test_dir = _require_dir(extract_archive(cfg, "voc2012_test", verify) / "VOCdevkit" / "VOC2012",
                                "voc2012_test")
        test_ids = read_id_list(test_dir / "ImageSets" / "Segmentation" / "test.txt")
        rows["test"] = []
        for image_id in test_ids:
            image_path = test_dir / "JPEGImages" / f"{image_id}.jpg"
            if not image_path.exists():
                raise FileNotFoundError(f"{image_path} is listed in test.txt but missing from the test "
                                        "archive")
            rows["test"].append((image_id, os.path.relpath(image_path, root)))
    # The train list last: its existence means the whole set is prepared.
    for split in sorted(lists, key=lambda s: s == "train"):
        write_sample_list(lists[split], rows[split])
    log.info("%s", ", ".join(f"voc {s}: {len(rows[s])} images" for s in lists))
    return lists
