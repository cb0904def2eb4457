"""Class names, the VOC palette and the Cityscapes labelId <-> trainId mappings."""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS

IGNORE_INDEX = 255

VOC_CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# The 19 evaluated classes, in trainId order (0..18), as cityscapesscripts defines them.
CITYSCAPES_CLASS_NAMES: tuple[str, ...] = tuple(
    label.name for label in sorted(
        (lb for lb in _CITYSCAPES_LABELS if 0 <= lb.trainId < IGNORE_INDEX), key=lambda lb: lb.trainId
    )
)

CLASS_NAMES: dict[str, tuple[str, ...]] = {"voc": VOC_CLASS_NAMES, "cityscapes": CITYSCAPES_CLASS_NAMES}
NUM_CLASSES: dict[str, int] = {name: len(classes) for name, classes in CLASS_NAMES.items()}


def _voc_palette() -> np.ndarray:
    """The 256-entry colour map of the VOC devkit (bit interleaving of the index)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


VOC_PALETTE: np.ndarray = _voc_palette()  # (256, 3) uint8; index 255 is the boundary colour (224,224,192)


def voc_rgb_to_index(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map an (H, W, 3) colour label through the VOC palette.

    Returns (index, off_palette): index uint8 (H, W) and a bool mask of pixels whose colour is neither
    a class colour nor the boundary colour (their index is undefined; the caller decides).
    """
    allowed = list(range(len(VOC_CLASS_NAMES))) + [IGNORE_INDEX]
    key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours = VOC_PALETTE[allowed].astype(np.int32)
    colour_keys = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
    order = np.argsort(colour_keys)
    sorted_keys = colour_keys[order]
    pos = np.clip(np.searchsorted(sorted_keys, key), 0, len(sorted_keys) - 1)
    off_palette = sorted_keys[pos] != key
    index = np.asarray(allowed, dtype=np.uint8)[order][pos]
    return index, off_palette


# Cityscapes: labelIds (0..33 in the *_gtFine_labelIds.png files) -> trainIds (0..18, 255 = ignore).
CITYSCAPES_LABEL_IDS: frozenset[int] = frozenset(lb.id for lb in _CITYSCAPES_LABELS if lb.id >= 0)
_LABELID_TO_TRAINID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _lb in _CITYSCAPES_LABELS:
    if _lb.id >= 0:
        _LABELID_TO_TRAINID[_lb.id] = _lb.trainId if 0 <= _lb.trainId < IGNORE_INDEX else IGNORE_INDEX

# trainId -> labelId for exporting predictions: the first label with that trainId (as
# cityscapesscripts' own inverse mapping); the ignore value maps to 0 ("unlabeled").
_TRAINID_TO_LABELID = np.zeros(256, dtype=np.uint8)
for _lb in reversed(_CITYSCAPES_LABELS):
    if 0 <= _lb.trainId < IGNORE_INDEX and _lb.id >= 0:
        _TRAINID_TO_LABELID[_lb.trainId] = _lb.id


def labelid_to_trainid(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes labelIds -> trainIds (uint8, 255 = ignore)."""
    return _LABELID_TO_TRAINID[np.asarray(label_ids, dtype=np.uint8)]


def trainid_to_labelid(train_ids: np.ndarray) -> np.ndarray:
    """Cityscapes trainIds (predictions) -> labelIds, the ids the evaluation server expects."""
    train_ids = np.asarray(train_ids)
    if train_ids.size and (train_ids.min() < 0 or train_ids.max() > 255):
        raise ValueError(f"trainIds must lie in 0..255, got {train_ids.min()}..{train_ids.max()}")
    return _TRAINID_TO_LABELID[train_ids.astype(np.uint8)]
