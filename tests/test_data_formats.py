"""Safe extraction, label reading/conversion, label mappings and the training transform."""

from __future__ import annotations

import io
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from lc.data import CLASS_NAMES, NUM_CLASSES, TrainTransform, denormalize, normalize, trainid_to_labelid
from lc.data.extract import UnsafeArchiveError, safe_extract
from lc.data.io import read_index_png
from lc.data.labels import VOC_PALETTE, labelid_to_trainid
from lc.data.synthetic import _sbd_mats
from lc.data.synthetic_scenes import Scene
from lc.data.voc import read_sbd_label, read_voc_label, train_aug_ids


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _file(name: str, data: bytes = b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_safe_extract_tar_and_zip(tmp_path):
    _tar(tmp_path / "ok.tar", [_file("top/a.txt", b"hello"), _link("top/b.txt", "a.txt")])
    dest = safe_extract(tmp_path / "ok.tar", tmp_path / "out")
    assert (dest / "top" / "a.txt").read_bytes() == b"hello"
    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as zf:
        zf.writestr("gtFine/x.json", "{}")
    assert (safe_extract(tmp_path / "ok.zip", tmp_path / "zout") / "gtFine" / "x.json").read_text() == "{}"


@pytest.mark.parametrize("members", [
    [_file("fine.txt"), _file("../evil.txt")],
    [_file("dir/../../evil.txt")],
    [_file("/etc/evil.txt")],
    [_file("fine.txt"), _link("link", "../../outside")],
    [_link("abs", "/etc/passwd")],
    [_link("hard", "../outside", kind=tarfile.LNKTYPE)],
])
def test_tar_path_traversal_is_refused_and_leaves_nothing(tmp_path, members):
    _tar(tmp_path / "bad.tar", members)
    target = tmp_path / "work" / "out"
    with pytest.raises(UnsafeArchiveError, match="bad.tar"):
        safe_extract(tmp_path / "bad.tar", target)
    assert not target.exists()
    assert list((tmp_path / "work").iterdir()) == []  # no temp folder left behind
    assert not (tmp_path / "evil.txt").exists()


def test_zip_path_traversal_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil.txt", "evil")
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil\.txt"):
        safe_extract(tmp_path / "bad.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


def _label_with_band() -> np.ndarray:
    label = np.zeros((6, 8), dtype=np.uint8)
    label[1:4, 2:6] = 15
    label[1, 2] = 255
    return label


def test_voc_label_palette_png_and_rgb_conversion(tmp_path):
    label = _label_with_band()
    palette_png = tmp_path / "p.png"
    image = Image.frombytes("P", (8, 6), label.tobytes())
    image.putpalette(VOC_PALETTE.reshape(-1).tolist())
    image.save(palette_png)
    assert np.array_equal(read_voc_label(palette_png), label)
    rgb_png = tmp_path / "rgb.png"
    Image.fromarray(VOC_PALETTE[label]).save(rgb_png)
    assert np.array_equal(read_voc_label(rgb_png), label)


def test_voc_label_off_palette_rgb_is_refused(tmp_path):
    rgb = VOC_PALETTE[_label_with_band()].copy()
    rgb[0, 0] = (1, 2, 3)
    path = tmp_path / "2007_000001.png"
    Image.fromarray(rgb).save(path)
    with pytest.raises(ValueError, match=r"2007_000001\.png.*1 pixels off the VOC palette"):
        read_voc_label(path)


def test_out_of_range_label_is_refused_naming_the_file(tmp_path):
    label = _label_with_band()
    label[0, 0] = 21
    path = tmp_path / "2007_000002.png"
    Image.fromarray(label).save(path)
    with pytest.raises(ValueError, match=r"2007_000002\.png: label values \[21\]"):
        read_voc_label(path)


def test_sbd_mat_round_trip(tmp_path):
    label = _label_with_band()
    label[label == 255] = 15  # SBD has no boundary band
    instances = (label > 0).astype(np.int32)
    cls_mat, _ = _sbd_mats(Scene(np.zeros(label.shape + (3,), np.uint8), label, instances))
    path = tmp_path / "2008_000003.mat"
    path.write_bytes(cls_mat)
    assert np.array_equal(read_sbd_label(path), label)
    (tmp_path / "junk.mat").write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match="junk.mat"):
        read_sbd_label(tmp_path / "junk.mat")


def test_train_aug_rule():
    assert train_aug_ids(["a", "b", "v1"], ["c", "v2"], ["a", "d"], ["v1", "v2"]) == ["a", "b", "c", "d"]


def test_class_tables_and_cityscapes_mapping():
    assert NUM_CLASSES == {"voc": 21, "cityscapes": 19}
    assert CLASS_NAMES["voc"][0] == "background" and CLASS_NAMES["voc"][20] == "tvmonitor"
    assert CLASS_NAMES["cityscapes"][0] == "road" and CLASS_NAMES["cityscapes"][18] == "bicycle"
    train_ids = np.arange(19, dtype=np.uint8)
    label_ids = trainid_to_labelid(train_ids)
    assert label_ids.tolist() == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    assert np.array_equal(labelid_to_trainid(label_ids), train_ids)
    assert labelid_to_trainid(np.array([0, 1, 9, 14, 29])).tolist() == [255] * 5
    assert trainid_to_labelid(np.array([255])).tolist() == [0]


def test_read_index_png_rejects_rgb(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="c.png"):
        read_index_png(tmp_path / "c.png")


def test_normalize_denormalize_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    image = normalize(rgb)
    assert image.shape == (3, 5, 7) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    assert np.array_equal(denormalize(image), rgb)


def test_train_transform_pads_crops_and_flips_consistently():
    torch.manual_seed(0)
    height, width = 10, 12
    # image channel 0 encodes the label so that image/label alignment can be checked after augmentation
    label = torch.arange(height * width).reshape(height, width) % 21
    image = (label.float() / 20.0).expand(3, height, width).clone()
    transform = TrainTransform(crop_size=16, scale_range=(1.0, 1.0))
    flips = 0
    for _ in range(20):
        out_image, out_label = transform(image, label)
        assert out_image.shape == (3, 16, 16) and out_label.shape == (16, 16)
        valid = out_label != 255
        assert valid.sum() == height * width  # scale 1: every pixel kept, the rest is padding
        assert torch.all(out_image[:, ~valid] == 0)  # image padding is 0 (the mean after normalisation)
        assert torch.allclose(out_image[0][valid], out_label[valid].float() / 20.0)
        flips += int(not torch.equal(out_label[:height, :width], label))
    assert 0 < flips < 20
    scaled_image, scaled_label = TrainTransform(crop_size=8, scale_range=(2.0, 2.0))(image, label)
    assert scaled_label.shape == (8, 8) and set(scaled_label.unique().tolist()) <= set(range(21))
