"""Test-set predictions in the evaluation servers' formats (`lc export`).

- PASCAL VOC 2012 (comp6: trained on data other than VOC's own): one single-channel palette PNG of
  class indices 0..20 per test image, with the VOC palette, at
  `results/VOC2012/Segmentation/comp6_test_cls/<image id>.png`, in a .tar.gz.
- Cityscapes: one PNG of labelIds (the trainId predictions mapped back through
  cityscapesscripts' label table) per test image, named `<city>/<city>_<seq>_<frame>_pred_labelIds.png`
  (the server matches on `<city>_<seq>_<frame>*.png`), in a .zip.
Beside the archive a JSON summary (`<archive stem>.json`): image count, predicted pixels per class,
checkpoint, protocol and the split that trained the model. The VOC export model's training split
is `evaluate.export_train_split` (DeepLab's custom, and the paper preset's: `trainval_aug`); a VOC
checkpoint whose run records another split is refused, as the archive would be mislabelled. Both
files are written to temporary names and renamed when complete.
"""

from __future__ import annotations

import gzip
import io
import logging
import re
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np

from lc.data import CLASS_NAMES, VOC_PALETTE, build_dataset, trainid_to_labelid
from lc.data.io import atomic_path, encode_png
from lc.device import device_name, resolve_device
from lc.evaluation.evaluate import write_json
from lc.evaluation.inference import protocol_from_config, run_protocol
from lc.evaluation.loading import load_for_evaluation, model_variant, training_split
from lc.evaluation.progress import progress

__all__ = ["ARCHIVE_SUFFIXES", "VOC_MEMBER", "cityscapes_member", "export_training_split", "run_export",
           "summary_path"]

VOC_MEMBER = "results/VOC2012/Segmentation/comp6_test_cls/{name}.png"
ARCHIVE_SUFFIXES = {"voc": (".tar.gz", ".tgz"), "cityscapes": (".zip",)}
_CITYSCAPES_NAME = re.compile(r"^(?P<city>[a-z_]+)_(?P<seq>\d{6})_(?P<frame>\d{6})$")
# Fixed member timestamps make an export of the same predictions byte-identical.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# What a run that records no split trained on: `lc train` used train_aug (VOC) / train (Cityscapes)
# before it took --split.
_DEFAULT_TRAIN_SPLIT = {"voc": "train_aug", "cityscapes": "train"}
log = logging.getLogger(__name__)


def summary_path(archive: str | Path) -> Path:
    """export/<name>.json beside export/<name>.<ext> (the workflow's `export_summary`)."""
    archive = Path(archive)
    return archive.with_name(archive.name.split(".")[0] + ".json")


def cityscapes_member(name: str) -> str:
    """`<city>/<city>_<seq>_<frame>_pred_labelIds.png` for a test image named `<city>_<seq>_<frame>`."""
    match = _CITYSCAPES_NAME.match(name)
    if match is None:
        raise ValueError(f"Cityscapes image name {name!r} is not <city>_<seq:6>_<frame:6>; the server "
                         "matches predictions by that pattern (re-run `lc prepare cityscapes`)")
    return f"{match['city']}/{name}_pred_labelIds.png"


class _TarGzWriter:
    def __init__(self, path: Path):
        self._gzip = gzip.GzipFile(filename="", mode="wb", fileobj=open(path, "wb"), mtime=0)
        self._tar = tarfile.open(fileobj=self._gzip, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, member: str, payload: bytes) -> None:
        info = tarfile.TarInfo(member)
        info.size, info.mode, info.mtime = len(payload), 0o644, 0
        self._tar.addfile(info, io.BytesIO(payload))

    def close(self) -> None:
        self._tar.close()
        fileobj = self._gzip.fileobj
        self._gzip.close()
        fileobj.close()


class _ZipWriter:
    def __init__(self, path: Path):
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)

    def add(self, member: str, payload: bytes) -> None:
        info = zipfile.ZipInfo(member, date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        self._zip.writestr(info, payload)

    def close(self) -> None:
        self._zip.close()


def _encode(dataset: str, name: str, labels: np.ndarray) -> tuple[str, bytes]:
    """(archive member, PNG bytes) of one image's (H, W) class-index prediction."""
    labels = labels.astype(np.uint8)
    if dataset == "voc":
        return VOC_MEMBER.format(name=name), encode_png(labels, palette=VOC_PALETTE)
    return cityscapes_member(name), encode_png(trainid_to_labelid(labels))


def _check_archive_name(dataset: str, out: Path) -> None:
    if not out.name.endswith(ARCHIVE_SUFFIXES[dataset]):
        raise ValueError(f"{out}: a {dataset} export is a {' or '.join(ARCHIVE_SUFFIXES[dataset])} archive; "
                         f"name the output accordingly (e.g. export/{dataset}_test"
                         f"{ARCHIVE_SUFFIXES[dataset][0]})")


def export_training_split(cfg: dict, checkpoint: str | Path, dataset: str) -> dict:
    """The "training" entry of the export summary: the split that trained the model and where that was
    read. For VOC, refuses a model trained on another split than `evaluate.export_train_split`."""
    split, source = training_split(checkpoint)
    if dataset == "voc" and split == "train":
        split = "train_aug"  # `build_dataset(cfg, "voc", "train")` reads train_aug
    if split is None:
        split, source = _DEFAULT_TRAIN_SPLIT[dataset], f"{source}; {_DEFAULT_TRAIN_SPLIT[dataset]} assumed"
    key = "export_train_split" if dataset == "voc" else "cityscapes_export.train_split"
    wanted = (cfg["evaluate"].get("export_train_split") if dataset == "voc"
              else (cfg["evaluate"].get("cityscapes_export") or {}).get("train_split"))
    if wanted is not None and split != wanted:
        raise ValueError(f"checkpoint {checkpoint} was trained on {split} ({source}) but "
                         f"evaluate.{key} is {wanted}; export the model trained with "
                         f"`lc train --split {wanted}` or set evaluate.{key}: {split}")
    return {"split": split, "source": source, "config_export_train_split": wanted}


def run_export(cfg: dict, checkpoint: str | Path, dataset: str, out: str | Path, split: str = "test",
               rho: float | None = None, multi_scale: bool = False, crf: bool = False,
               device: str | None = None) -> dict:
    """Predict every image of `split` and write the server archive `out` and its summary JSON."""
    out = Path(out)
    _check_archive_name(dataset, out)
    device_t = resolve_device(device or cfg.get("device"))
    data = build_dataset(cfg, dataset, split)
    if len(data) == 0:
        raise ValueError(f"{dataset} {split} has no images ({data.list_file} is empty); nothing to export. "
                         "Provide the test images (README, Data) and re-run `lc prepare`")
    model, model_info = load_for_evaluation(cfg, checkpoint, dataset, device_t)
    training = export_training_split(cfg, checkpoint, dataset)
    log.info("exporting %s %s with %s, trained on %s", dataset, split, checkpoint, training["split"])
    protocol = protocol_from_config(cfg["evaluate"], multi_scale, crf)
    num_classes = len(CLASS_NAMES[dataset])
    pixels = np.zeros(num_classes, dtype=np.int64)
    seconds = 0.0
    names: set[str] = set()
    with atomic_path(out) as tmp:
        writer = _TarGzWriter(tmp) if dataset == "voc" else _ZipWriter(tmp)
        try:
            for index in progress(range(len(data)), len(data), f"export {dataset} {split}",
                                  int(cfg["train"].get("log_every", 20))):
                item = data[index]
                if item["name"] in names:
                    raise ValueError(f"{data.list_file} lists {item['name']!r} twice; re-run `lc prepare`")
                names.add(item["name"])
                start = time.perf_counter()
                labels, _ = run_protocol(model, item["image"][None].to(device_t), protocol, rho=rho)
                labels = labels[0].cpu().numpy()
                seconds += time.perf_counter() - start  # .cpu() above waited for the GPU
                pixels += np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
                writer.add(*_encode(dataset, item["name"], labels))
        finally:
            writer.close()
    summary = {
        "dataset": dataset, "split": split, "archive": str(out), "num_images": len(names),
        "layout": VOC_MEMBER if dataset == "voc" else "<city>/<city>_<seq>_<frame>_pred_labelIds.png",
        "values": "VOC class indices 0..20 (palette PNG)" if dataset == "voc"
        else "Cityscapes labelIds (trainIds mapped through cityscapesscripts)",
        "checkpoint": str(checkpoint), "variant": model_variant(model), "preset": cfg["preset"],
        "train_split": training["split"], "training": training, "model": model_info,
        "device": device_name(device_t), "rho": float(model.rho if rho is None else rho),
        "protocol": protocol.describe(),
        "predicted_pixels": dict(zip(CLASS_NAMES[dataset], pixels.tolist(), strict=True)),
        "ms_per_image": seconds / len(names) * 1000.0,
    }
    write_json(summary_path(out), summary)
    return summary
