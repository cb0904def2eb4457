"""Synthetic VOC 2012, SBD and Cityscapes archives in the real on-disk formats (`lc synth`).

For the demo and test presets: deterministic (seeded by the config's `seed`), byte for byte the
same on every run, written into `data.mirror` together with an MD5SUMS file, and then fetched,
verified, extracted and prepared by exactly the code that handles the real archives.

- VOCtrainval_11-May-2012.tar: VOCdevkit/VOC2012/JPEGImages/*.jpg (every image, SBD's included, as
  in the real archive), SegmentationClass/ and SegmentationObject/ palette PNGs with the 255 band,
  ImageSets/Segmentation/{train,val,trainval}.txt;
- VOC2012test.tar: VOCdevkit/VOC2012/JPEGImages/*.jpg and ImageSets/Segmentation/test.txt;
- benchmark.tgz: benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat (GTcls), inst/*.mat (GTinst),
  train.txt, val.txt}; SBD overlaps VOC train and val as the real one does;
- gtFine_trainvaltest.zip / leftImg8bit_trainvaltest.zip: gtFine/<split>/<city>/<name>_gtFine_
  {labelIds,instanceIds,color}.png + _polygons.json, leftImg8bit/<split>/<city>/<name>_leftImg8bit.png.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import scipy.sparse
from cityscapesscripts.helpers.labels import id2label
from scipy import ndimage
from scipy.io import savemat
from tqdm import tqdm

from lc.data.download import MD5SUMS_NAME
from lc.data.io import atomic_path, encode_jpeg, encode_png, md5_file, write_text_atomic
from lc.data.labels import VOC_PALETTE
from lc.data.synthetic_cityscapes import cityscapes_scene
from lc.data.synthetic_scenes import Scene, voc_boundary_band, voc_scene

log = logging.getLogger(__name__)

SIZE_KEYS = ("image_size", "voc_train", "voc_val", "voc_test", "sbd_train", "sbd_val",
             "cityscapes_train", "cityscapes_val", "cityscapes_test", "cityscapes_image_size")
CITYSCAPES_CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster"),
                     "test": ("berlin", "bielefeld", "bonn")}
_TAR_MTIME = 1336694400  # 2012-05-11, the VOC 2012 release date
_ZIP_DATE = (2016, 2, 29, 0, 0, 0)
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Mon May 23 12:00:00 2011"


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator that depends only on the config seed and the keys (e.g. data set and image id)."""
    return np.random.default_rng([int(seed)] + [zlib.crc32(k.encode()) for k in keys])


def _write_tar(path: Path, entries: Iterable[tuple[str, bytes]], compress: bool) -> None:
    """A tar (gzip if `compress`) with fixed metadata, so equal contents give equal bytes."""
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if compress else raw
        with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as tar:
            directories: set[str] = set()
            for name, data in entries:
                parts = name.split("/")[:-1]
                for depth in range(1, len(parts) + 1):
                    directory = "/".join(parts[:depth])
                    if directory not in directories:
                        directories.add(directory)
                        tar.addfile(_tar_info(directory + "/", 0, tarfile.DIRTYPE, 0o755))
                tar.addfile(_tar_info(name, len(data), tarfile.REGTYPE, 0o644), io.BytesIO(data))
        if compress:
            stream.close()


def _tar_info(name: str, size: int, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode, info.mtime = size, kind, mode, _TAR_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_zip(path: Path, entries: Iterable[tuple[str, bytes]]) -> None:
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)


def _mat_bytes(variables: dict) -> bytes:
    """A MATLAB v5 file as SBD's (compressed), with a fixed header instead of today's date."""
    buffer = io.BytesIO()
    savemat(buffer, variables, do_compression=True, oned_as="column")
    data = bytearray(buffer.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")
    return bytes(data)


def _boundaries(segmentation: np.ndarray, num_classes: int) -> np.ndarray:
    """SBD's Boundaries: a (num_classes, 1) cell of sparse logical edge maps, one per class."""
    cell = np.empty((num_classes, 1), dtype=object)
    for cls in range(1, num_classes + 1):
        mask = segmentation == cls
        edge = mask & ~ndimage.binary_erosion(mask, border_value=1)
        cell[cls - 1, 0] = scipy.sparse.csc_matrix(edge)
    return cell


def _sbd_mats(scene: Scene) -> tuple[bytes, bytes]:
    """GTcls and GTinst .mat files of one scene (SBD labels have no boundary band)."""
    segmentation = scene.label.astype(np.uint8)
    present = np.unique(segmentation[segmentation > 0]).astype(np.uint8).reshape(-1, 1)
    cls_mat = _mat_bytes({"GTcls": {"Segmentation": segmentation, "Boundaries": _boundaries(segmentation, 20),
                                    "CategoriesPresent": present}})
    # Instances numbered 1..k in order of appearance (fully occluded ones dropped), as SBD numbers them.
    numbers = np.unique(scene.instances[scene.instances > 0])
    renumber = np.zeros(int(scene.instances.max()) + 1, dtype=np.uint8)
    renumber[numbers] = np.arange(1, len(numbers) + 1)
    instances = renumber[scene.instances]
    numbers = np.arange(1, len(numbers) + 1)
    categories = np.array([int(np.bincount(segmentation[instances == n]).argmax()) for n in numbers],
                          dtype=np.uint8).reshape(-1, 1)
    inst_mat = _mat_bytes({"GTinst": {"Segmentation": instances,
                                      "Boundaries": _boundaries(instances, max(len(numbers), 1)),
                                      "Categories": categories}})
    return cls_mat, inst_mat


def voc_id_sets(sizes: dict) -> dict[str, list[str]]:
    """Image ids of each synthetic VOC/SBD list, overlapping as in the real data.

    SBD train and val each take some VOC train and some VOC val images plus images of their own,
    so that train_aug = SBD train + SBD val + VOC train - VOC val is a real set operation.
    """
    counter = iter(range(10**6))

    def fresh(n: int) -> list[str]:
        return [f"{2007 + (i % 5)}_{i:06d}" for i in (next(counter) for _ in range(n))]

    voc_train, voc_val = fresh(int(sizes["voc_train"])), fresh(int(sizes["voc_val"]))
    n_sbd_train, n_sbd_val = int(sizes["sbd_train"]), int(sizes["sbd_val"])
    half_val = len(voc_val) // 2
    train_from_voc_train = voc_train[: min(len(voc_train) // 2, n_sbd_train // 3)]
    train_from_voc_val = voc_val[: min(half_val, n_sbd_train // 4)]
    val_from_voc_val = voc_val[half_val:][: min(len(voc_val) - half_val, n_sbd_val // 4)]
    val_from_voc_train = voc_train[len(voc_train) // 2:][: min(len(voc_train) // 4, n_sbd_val // 4)]
    sbd_train = (train_from_voc_train + train_from_voc_val
                 + fresh(n_sbd_train - len(train_from_voc_train) - len(train_from_voc_val)))
    sbd_val = (val_from_voc_val + val_from_voc_train
               + fresh(n_sbd_val - len(val_from_voc_val) - len(val_from_voc_train)))
    return {"voc_train": voc_train, "voc_val": voc_val, "sbd_train": sorted(sbd_train),
            "sbd_val": sorted(sbd_val), "voc_test": fresh(int(sizes["voc_test"]))}


def _voc_scene(seed: int, image_id: str, image_size: list[int]) -> Scene:
    rng = _rng(seed, "voc", image_id)
    height, width = (max(16, round(s * rng.uniform(0.85, 1.0))) for s in image_size)
    # ids are numbered consecutively within each list (voc_id_sets): the first object's class cycles
    # through the 20 classes, so every list of 20 or more images has all of them
    first_class = int(image_id.rsplit("_", 1)[-1]) % 20 + 1
    return voc_scene(rng, height, width, first_class)


def _band_width(scene: Scene) -> int:
    # VOC's void band is about 5 px on ~500 px images; keep the same proportion (at least 1 px).
    return max(1, round(min(scene.label.shape) / 100))


def _progress(items: list, desc: str) -> Iterator:
    """tqdm on a terminal; with stderr in a log file, one plain line once the loop is done."""
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, unit="img", file=sys.stderr, leave=False)
        return
    yield from items
    log.info("%s: %d images", desc, len(items))


def _voc_entries(seed: int, sizes: dict, ids: dict[str, list[str]]) -> tuple[list, list, list]:
    """(trainval tar entries, test tar entries, SBD tgz entries)."""
    voc_root, sbd_root = "VOCdevkit/VOC2012", "benchmark_RELEASE/dataset"
    segmented = set(ids["voc_train"]) | set(ids["voc_val"])
    sbd_ids = set(ids["sbd_train"]) | set(ids["sbd_val"])
    trainval, sbd = [], []
    for image_id in _progress(sorted(segmented | sbd_ids), "synth voc+sbd"):
        scene = _voc_scene(seed, image_id, sizes["image_size"])
        jpeg = encode_jpeg(scene.image)
        trainval.append((f"{voc_root}/JPEGImages/{image_id}.jpg", jpeg))
        if image_id in segmented:
            band = _band_width(scene)
            trainval.append((f"{voc_root}/SegmentationClass/{image_id}.png",
                             encode_png(voc_boundary_band(scene.label, band), VOC_PALETTE)))
            objects = np.where(voc_boundary_band(scene.label, band) == 255, 255, scene.instances)
            trainval.append((f"{voc_root}/SegmentationObject/{image_id}.png",
                             encode_png(objects.astype(np.uint8), VOC_PALETTE)))
        if image_id in sbd_ids:
            cls_mat, inst_mat = _sbd_mats(scene)
            sbd += [(f"{sbd_root}/img/{image_id}.jpg", jpeg), (f"{sbd_root}/cls/{image_id}.mat", cls_mat),
                    (f"{sbd_root}/inst/{image_id}.mat", inst_mat)]
    lists = {"train": ids["voc_train"], "val": ids["voc_val"], "trainval": ids["voc_train"] + ids["voc_val"]}
    for name, members in lists.items():
        trainval.append((f"{voc_root}/ImageSets/Segmentation/{name}.txt", _id_text(members)))
    sbd += [(f"{sbd_root}/{split}.txt", _id_text(ids[f"sbd_{split}"])) for split in ("train", "val")]
    test = [(f"{voc_root}/JPEGImages/{i}.jpg", encode_jpeg(_voc_scene(seed, i, sizes["image_size"]).image))
            for i in ids["voc_test"]]
    test.append((f"{voc_root}/ImageSets/Segmentation/test.txt", _id_text(ids["voc_test"])))
    return sorted(trainval), sorted(test), sorted(sbd)


def _id_text(ids: Iterable[str]) -> bytes:
    return "".join(f"{i}\n" for i in sorted(ids)).encode()


def cityscapes_names(sizes: dict) -> dict[str, list[tuple[str, str]]]:
    """split -> [(city, name)] with names <city>_<seq:06d>_000019, cities round-robin."""
    names = {}
    for split, cities in CITYSCAPES_CITIES.items():
        count = int(sizes[f"cityscapes_{split}"])
        names[split] = [(cities[i % len(cities)], f"{cities[i % len(cities)]}_{i // len(cities):06d}_000019")
                        for i in range(count)]
    return names


def _cityscapes_entries(seed: int, sizes: dict) -> Iterator[tuple[str, str, bytes]]:
    """("gtFine" | "leftImg8bit", member name, bytes) for every file of the two zips."""
    height, width = (int(s) for s in sizes["cityscapes_image_size"])
    colours = np.zeros((256, 4), dtype=np.uint8)
    for label_id, label in id2label.items():
        if 0 <= label_id < 256:
            colours[label_id] = (*label.color, 255)
    void_ids = [name_id for name_id, label in id2label.items() if label.category == "void" and name_id >= 0]
    for split, entries in cityscapes_names(sizes).items():
        for city, name in _progress(entries, f"synth cityscapes {split}"):
            scene = cityscapes_scene(_rng(seed, "cityscapes", name), height, width)
            label, instances, polygons = scene.label, scene.instances, scene.polygons
            if split == "test":  # the public test annotations hold only the void regions
                label = np.where(np.isin(label, void_ids), label, 0).astype(np.uint8)
                instances = label.astype(np.int32)
                polygons = [(n, p) for n, p in polygons if n in {id2label[i].name for i in void_ids}]
            gt = f"gtFine/{split}/{city}/{name}_gtFine"
            document = {"imgHeight": height, "imgWidth": width,
                        "objects": [{"label": n, "polygon": p} for n, p in polygons]}
            yield "gtFine", f"{gt}_color.png", encode_png(colours[label])
            yield "gtFine", f"{gt}_instanceIds.png", encode_png(instances.astype(np.uint16))
            yield "gtFine", f"{gt}_labelIds.png", encode_png(label)
            yield "gtFine", f"{gt}_polygons.json", json.dumps(document, indent=4).encode()
            yield ("leftImg8bit", f"leftImg8bit/{split}/{city}/{name}_leftImg8bit.png",
                   encode_png(scene.image))


_README = (b"Synthetic stand-in generated by `lc synth` (Layer Cascade reproduction) in the layout of the "
           b"real archive. Not the real data set.\n")


def make_synthetic_mirror(cfg: dict) -> dict[str, str]:
    """Write all synthetic archives and MD5SUMS into data.mirror; returns filename -> md5."""
    data = cfg["data"]
    if not data.get("synthetic"):
        raise ValueError(f"preset {cfg['preset']!r} has data.synthetic: false; `lc synth` is for the "
                         "synthetic presets (demo, test)")
    mirror = data.get("mirror")
    if not mirror or str(mirror).startswith(("http://", "https://")):
        raise ValueError(f"data.mirror must be a local folder for `lc synth`, got {mirror!r}")
    sizes = data.get("synthetic_sizes") or {}
    missing = [k for k in SIZE_KEYS if k not in sizes]
    if missing:
        raise ValueError(f"data.synthetic_sizes lacks {missing} (preset {cfg['preset']!r}); see config.yaml")
    mirror, seed, archives = Path(mirror), int(cfg["seed"]), data["archives"]
    ids = voc_id_sets(sizes)
    trainval, test, sbd = _voc_entries(seed, sizes, ids)
    _write_tar(mirror / archives["voc2012_trainval"]["filename"], trainval, compress=False)
    _write_tar(mirror / archives["voc2012_test"]["filename"], test, compress=False)
    _write_tar(mirror / archives["sbd"]["filename"], sbd, compress=True)
    by_zip: dict[str, list[tuple[str, bytes]]] = {
        which: [("README", _README), ("license.txt", _README)] for which in ("gtFine", "leftImg8bit")}
    for which, name, payload in _cityscapes_entries(seed, sizes):
        by_zip[which].append((name, payload))
    _write_zip(mirror / archives["cityscapes_gtfine"]["filename"], by_zip["gtFine"])
    _write_zip(mirror / archives["cityscapes_leftimg8bit"]["filename"], by_zip["leftImg8bit"])
    keys = ("voc2012_trainval", "voc2012_test", "sbd", "cityscapes_gtfine", "cityscapes_leftimg8bit")
    sums = {archives[k]["filename"]: md5_file(mirror / archives[k]["filename"]) for k in keys}
    # md5sum's format, written last: its presence means the mirror is complete.
    write_text_atomic(mirror / MD5SUMS_NAME, "".join(f"{sums[name]}  {name}\n" for name in sorted(sums)))
    return sums
