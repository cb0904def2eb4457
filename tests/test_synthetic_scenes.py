"""The synthetic scene generators: learnable classes, hard boundaries, every class present."""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import id2label
from scipy import ndimage

from lc.data.synthetic import _rng, _voc_scene, cityscapes_names, voc_id_sets
from lc.data.synthetic_cityscapes import cityscapes_scene
from lc.data.synthetic_scenes import _STYLES, voc_scene

NUM_OBJECT_CLASSES = 20


def test_voc_class_colours_are_distinct_and_saturated():
    colours = np.array([style["colours"][0] for style in _STYLES])
    assert len(colours) == NUM_OBJECT_CLASSES
    distance = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    assert distance.min() >= 100.0  # far apart in RGB: separable by colour alone
    assert (colours.max(axis=1) - colours.min(axis=1) >= 110.0).all()  # none close to the grey background
    families = [style["family"] for style in _STYLES]
    assert all(families.count(f) == 2 for f in set(families))  # each shape shared by two classes


def test_every_voc_list_of_twenty_images_has_every_class():
    ids = voc_id_sets({"voc_train": 20, "voc_val": 20, "voc_test": 2, "sbd_train": 4, "sbd_val": 4})
    present = set()
    for image_id in ids["voc_val"]:
        present |= set(np.unique(_voc_scene(0, image_id, [48, 64]).label).tolist())
    assert present == set(range(NUM_OBJECT_CLASSES + 1))


def test_voc_boundaries_are_harder_than_interiors():
    """Blur and noise mix colours at object outlines: far from the class colour there, close inside."""
    errors_edge, errors_inside = [], []
    for k in range(6):
        scene = voc_scene(_rng(0, "scene-test", str(k)), 96, 120, first_class=k + 1)
        for number in np.unique(scene.instances[scene.instances > 0]):
            mask = scene.instances == number
            inside = ndimage.binary_erosion(mask, iterations=3)
            edge = mask & ~ndimage.binary_erosion(mask)
            if inside.sum() < 20 or edge.sum() < 10:
                continue
            mean = scene.image[inside].astype(float).mean(axis=0)
            errors_inside.append(np.abs(scene.image[inside] - mean).mean())
            errors_edge.append(np.abs(scene.image[edge] - mean).mean())
    assert errors_inside and np.mean(errors_edge) > 1.3 * np.mean(errors_inside)


def test_cityscapes_scenes_have_every_train_class():
    names = cityscapes_names({"cityscapes_train": 30, "cityscapes_val": 1, "cityscapes_test": 1})["train"]
    present = set()
    for _, name in names:
        label = cityscapes_scene(_rng(0, "cityscapes", name), 64, 128).label
        present |= {id2label[int(i)].trainId for i in np.unique(label)}
    assert set(range(19)) <= present
