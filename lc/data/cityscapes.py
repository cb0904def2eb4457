"""Cityscapes fine annotations -> trainId labels and split lists (`lc prepare cityscapes`).

The *_gtFine_labelIds.png files (ids 0..33) are mapped to the 19 trainIds (255 = ignore) with
cityscapesscripts' label table and written to
<data.root>/cityscapes/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png. Test images have no
public labels; their list has no label column (an empty test split is allowed; train and val must
not be empty). Predictions go back to labelIds with `lc.data.labels.trainid_to_labelid` for the
evaluation server. The list files mean "prepared": they are deleted first and written last.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lc.data.errors import DataError
from lc.data.extract import extract_archive
from lc.data.io import (
    ARCHIVE_FIX,
    encode_png,
    image_size,
    read_index_png,
    remove_files,
    write_bytes_atomic,
    write_sample_list,
)
from lc.data.labels import CITYSCAPES_LABEL_IDS, IGNORE_INDEX, labelid_to_trainid
from lc.data.paths import data_root, prepared_dir, prepared_list_files

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
log = logging.getLogger(__name__)
# license plate (id -1) is drawn as 255 in uint8 label images: accept it, it maps to ignore.
_ALLOWED_LABEL_IDS = np.array(sorted(CITYSCAPES_LABEL_IDS | {IGNORE_INDEX}))


def read_label_ids(path: str | Path) -> np.ndarray:
    """A *_gtFine_labelIds.png, refused (naming the file) if it holds an unknown id."""
    label_ids = read_index_png(path, ARCHIVE_FIX)
    values = np.unique(label_ids)
    unknown = values[~np.isin(values, _ALLOWED_LABEL_IDS)]
    if unknown.size:
        raise ValueError(f"{path}: unknown Cityscapes labelIds {unknown.tolist()[:10]} (valid: 0..33); "
                         "is this a *_gtFine_labelIds.png file?")
    return label_ids


def prepare_cityscapes(cfg: dict, verify: bool = False) -> dict[str, Path]:
    """Extract the two zips, write trainId labels and the split lists; returns split -> list file.

    verify: hash every archive again, trusting no cached digest (`lc prepare --verify`)."""
    root = data_root(cfg)
    lists = prepared_list_files(cfg, "cityscapes")
    remove_files(list(lists.values()))
    gt_root = extract_archive(cfg, "cityscapes_gtfine", verify) / "gtFine"
    image_root = extract_archive(cfg, "cityscapes_leftimg8bit", verify) / "leftImg8bit"
    out_root = prepared_dir(cfg, "cityscapes") / "gtFine"
    rows: dict[str, list[tuple[str, ...]]] = {}
    for split in lists:
        images = sorted((image_root / split).glob(f"*/*{IMAGE_SUFFIX}"))
        if not images and split != "test":  # an empty test split is allowed (synthetic cityscapes_test: 0)
            raise DataError(f"the Cityscapes {split} split is empty: no *{IMAGE_SUFFIX} files under "
                            f"{image_root / split}; the leftImg8bit archive is incomplete, download it again")
        rows[split] = []
        for image_path in tqdm(images, desc=f"prepare cityscapes {split}", unit="img", file=sys.stderr,
                               leave=False, disable=not sys.stderr.isatty()):
            name, city = image_path.name[: -len(IMAGE_SUFFIX)], image_path.parent.name
            if split == "test":
                rows[split].append((name, os.path.relpath(image_path, root)))
                continue
            source = gt_root / split / city / f"{name}{LABEL_IDS_SUFFIX}"
            if not source.exists():
                raise FileNotFoundError(f"{source} is missing for image {image_path}; the gtFine archive "
                                        "is incomplete, download it again")
            train_ids = labelid_to_trainid(read_label_ids(source))
            size = image_size(image_path)
            if train_ids.shape != size:
                raise DataError(f"{source}: label size {train_ids.shape} differs from image {image_path} "
                                f"size {size}; the archives do not belong together, download them again")
            target = out_root / split / city / f"{name}{TRAIN_IDS_SUFFIX}"
            write_bytes_atomic(target, encode_png(train_ids))
            rows[split].append((name, os.path.relpath(image_path, root), os.path.relpath(target, root)))
    # The train list last: its existence means the whole set is prepared.
    for split in sorted(lists, key=lambda s: s == "train"):
        write_sample_list(lists[split], rows[split])
    log.info("%s", ", ".join(f"cityscapes {s}: {len(rows[s])} images" for s in lists))
    return lists
