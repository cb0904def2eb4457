"""Data: download and verification, preparation of VOC-aug and Cityscapes, synthetic stand-ins, loaders.

Public API (the README's data contract):
`build_dataset(cfg, dataset, split, train=False)`, `CLASS_NAMES`, `NUM_CLASSES`, `denormalize`,
`worker_init_fn`, `seeded_generator`, `prepared_list_files(cfg, dataset)`, `trainid_to_labelid`.
Preparation and download (`prepare_voc`, `prepare_cityscapes`, `fetch_archive`,
`make_synthetic_mirror`) import lazily from their modules: `lc.data.voc`, `lc.data.cityscapes`,
`lc.data.download`, `lc.data.synthetic`.
"""

from lc.data.datasets import SegmentationDataset, build_dataset
from lc.data.labels import (
    CITYSCAPES_CLASS_NAMES,
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_CLASSES,
    VOC_CLASS_NAMES,
    VOC_PALETTE,
    labelid_to_trainid,
    trainid_to_labelid,
)
from lc.data.paths import archive_path, data_root, prepared_dir, prepared_list_files
from lc.data.transforms import (
    IMAGE_MEAN,
    IMAGE_STD,
    TrainTransform,
    denormalize,
    normalize,
    seeded_generator,
    worker_init_fn,
)

__all__ = [
    "CITYSCAPES_CLASS_NAMES", "CLASS_NAMES", "IGNORE_INDEX", "IMAGE_MEAN", "IMAGE_STD", "NUM_CLASSES",
    "VOC_CLASS_NAMES", "VOC_PALETTE", "SegmentationDataset", "TrainTransform", "archive_path",
    "build_dataset", "data_root", "denormalize", "labelid_to_trainid", "normalize", "prepared_dir",
    "prepared_list_files", "seeded_generator", "trainid_to_labelid", "worker_init_fn",
]
