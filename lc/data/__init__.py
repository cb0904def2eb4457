"""Data: download and verification, preparation of VOC-aug and Cityscapes, synthetic stand-ins, loaders.

Public API (the README's data contract): `build_dataset(cfg, dataset, split, train=False)`,
`CLASS_NAMES`, `NUM_CLASSES`, `denormalize`, `worker_init_fn`, `seeded_generator`,
`prepared_list_files(cfg, dataset)`, `weights_path(cfg)`, `trainid_to_labelid`. Download, verification,
credentials, preparation and synthesis live in `lc.data.download`, `lc.data.verify`,
`lc.data.credentials`, `lc.data.voc`, `lc.data.cityscapes`, `lc.data.synthetic`. Problems a user can
fix raise `lc.data.errors.DataError` (or a subclass) with the file and the fix in the message.

Names are imported lazily (PEP 562) so that `lc download` / `lc synth` / `lc prepare` start without
importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SegmentationDataset": "datasets", "build_dataset": "datasets",
    "CITYSCAPES_CLASS_NAMES": "labels", "CLASS_NAMES": "labels", "IGNORE_INDEX": "labels",
    "NUM_CLASSES": "labels", "VOC_CLASS_NAMES": "labels", "VOC_PALETTE": "labels",
    "labelid_to_trainid": "labels", "trainid_to_labelid": "labels",
    "archive_path": "paths", "data_root": "paths", "prepared_dir": "paths", "prepared_list_files": "paths",
    "weights_path": "paths", "DataError": "errors",
    "IMAGE_MEAN": "transforms", "IMAGE_STD": "transforms", "TrainTransform": "transforms",
    "denormalize": "transforms", "normalize": "transforms", "seeded_generator": "transforms",
    "worker_init_fn": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lc.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lc.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
