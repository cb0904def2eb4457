"""Synthetic scenes that are learnable but not trivial, for the demo and test presets.

VOC-like scenes: a muted, low-saturation background with a few grey distractors and 2-3 large
objects. Each of the 20 classes has a saturated colour of its own (far from the others' and from
grey), a texture and a shape family shared by two classes; instances vary in size, rotation, aspect
and shade, may be truncated by the image border, occlude each other, and some classes carry thin
parts (legs, spokes). A slight blur and sensor noise make boundaries ambiguous, so interiors are
easy and boundaries hard, as in real data. The demo's narrow networks, trained from scratch for
about a thousand steps, learn every class from these (see README, "Synthetic data").

Cityscapes-like scenes: sky, buildings with windows, vegetation, road and sidewalks in perspective,
terrain, poles with signs and lights, cars, people, riders with bicycles, trucks, an ego-vehicle
hood and a rectification border (both void), drawn as polygons in labelId space.

Class appearance is fixed (its own seed) so that every data set shares the same classes; the
layout of each image comes from the caller's generator."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

_APPEARANCE_SEED = 2017
_NUM_VOC_OBJECT_CLASSES = 20
_SHAPE_FAMILIES = 10
_THIN_PART_CLASSES = frozenset({2, 3, 9, 15, 16})  # bicycle, bird, chair, person, pottedplant


@dataclass
class Scene:
    image: np.ndarray                 # (H, W, 3) uint8
    label: np.ndarray                 # (H, W) uint8: VOC class index / Cityscapes labelId
    instances: np.ndarray             # (H, W) int32: instance number (0 = none)
    polygons: list[tuple[str, list[list[int]]]] = field(default_factory=list)  # Cityscapes only


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random grid upsampled bilinearly."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1))
    return ndimage.zoom(grid, (height / (cells + 1), width / (cells + 1)), order=1, grid_mode=True,
                        mode="nearest")[:height, :width]


def _distinct_colours(count: int) -> np.ndarray:
    """`count` saturated RGB colours as far from each other as possible (greedy farthest point).

    Candidates are the colours of a coarse RGB grid at least 110 away from grey (max - min channel),
    so none resembles the muted background; the first is pure red, each next one the candidate
    farthest from those already chosen.
    """
    levels = np.arange(0.0, 256.0, 15.0)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid[grid.max(axis=1) - grid.min(axis=1) >= 110.0]
    chosen = [grid[np.argmin(np.abs(grid - [255.0, 0.0, 0.0]).sum(axis=1))]]
    nearest = np.linalg.norm(grid - chosen[0], axis=1)
    while len(chosen) < count:
        chosen.append(grid[int(np.argmax(nearest))])
        nearest = np.minimum(nearest, np.linalg.norm(grid - chosen[-1], axis=1))
    return np.array(chosen)


def _class_styles() -> list[dict]:
    """Per VOC object class: shape family, two colours and a texture (fixed for all data sets).

    Every class has a saturated colour of its own, far from the other classes' and from the muted
    background (`_distinct_colours`). Its texture mixes in a shade a quarter of the way to white
    (dark colours) or black (bright ones), so the texture is a cue and the mean colour stays the
    class's. Two classes share each shape family.
    """
    rng = np.random.default_rng(_APPEARANCE_SEED)
    colours = _distinct_colours(_NUM_VOC_OBJECT_CLASSES)
    styles = []
    for index, base in enumerate(colours):
        target = 255.0 if base.mean() < 128 else 0.0
        styles.append({
            "family": index % _SHAPE_FAMILIES,
            "colours": (base, base + 0.25 * (target - base)),
            "texture": ("stripes", "checker", "dots", "noise", "gradient")[index % 5],
            "frequency": rng.uniform(0.1, 0.2),
            "angle": rng.uniform(0, np.pi),
            "aspect": rng.uniform(0.65, 1.0),
        })
    return styles


_STYLES = _class_styles()


def _shape_mask(family: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of a unit-size shape of `family` in local coordinates (u, v)."""
    radius2 = u * u + v * v
    if family == 0:  # ellipse
        return radius2 <= 1.0
    if family == 1:  # rectangle
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.7)
    if family == 2:  # triangle
        return (v <= 0.6) & (np.abs(u) <= (v + 1.0) / 1.6)
    if family == 3:  # diamond
        return np.abs(u) + np.abs(v) <= 1.0
    if family == 4:  # ring
        return (radius2 <= 1.0) & (radius2 >= 0.36)
    if family == 5:  # cross
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if family == 6:  # five-pointed star
        return np.sqrt(radius2) <= 0.6 + 0.4 * np.cos(5.0 * np.arctan2(v, u))
    if family == 7:  # crescent
        return (radius2 <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.49)
    if family == 8:  # hexagon
        return np.maximum(np.abs(u) * 0.866 + np.abs(v) * 0.5, np.abs(v)) <= 0.85
    # L shape
    return (((u >= -1) & (u <= -0.4) & (np.abs(v) <= 1)) | ((v >= 0.4) & (v <= 1) & (np.abs(u) <= 1)))


def _texture(style: dict, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture value in [0, 1] in object coordinates (pixels)."""
    f, a = style["frequency"], style["angle"]
    kind = style["texture"]
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * f * (u * np.cos(a) + v * np.sin(a)))
    if kind == "checker":
        return ((np.sin(2 * np.pi * f * u) * np.sin(2 * np.pi * f * v)) > 0).astype(np.float64)
    if kind == "dots":
        return ((np.sin(2 * np.pi * f * u) * np.sin(2 * np.pi * f * v)) > 0.55).astype(np.float64)
    if kind == "noise":
        return 0.5 + 0.5 * _smooth_noise(rng, *u.shape, cells=max(2, int(max(u.shape) * f / 2)))
    return np.clip(0.5 + v / (2 * max(u.shape)) * 4, 0, 1)  # gradient along the object's axis


def _segment_mask(yy: np.ndarray, xx: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
                  half_width: float) -> np.ndarray:
    """Pixels within half_width of the segment p0-p1 (points as (y, x))."""
    dy, dx = p1[0] - p0[0], p1[1] - p0[1]
    length2 = max(dy * dy + dx * dx, 1e-9)
    t = np.clip(((yy - p0[0]) * dy + (xx - p0[1]) * dx) / length2, 0.0, 1.0)
    return (yy - p0[0] - t * dy) ** 2 + (xx - p0[1] - t * dx) ** 2 <= half_width ** 2


def _finish(image: np.ndarray, rng: np.random.Generator, noise_sigma: float) -> np.ndarray:
    """Slight blur (mixed boundary pixels) and sensor noise; float RGB -> uint8."""
    image = ndimage.uniform_filter(image, size=(3, 3, 1), mode="nearest")
    image = image + rng.normal(0.0, noise_sigma, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _muted_colour(rng: np.random.Generator, low: float, high: float, tint: float) -> np.ndarray:
    """A grey of random brightness with a slight tint: background and clutter colours."""
    return rng.uniform(low, high) + rng.uniform(-tint, tint, size=3)


def voc_scene(rng: np.random.Generator, height: int, width: int, first_class: int | None = None) -> Scene:
    """A VOC-like image with its class labels (no boundary band) and instance numbers.

    `first_class` (1-20) fixes the class of the first object, so that a caller cycling through the
    classes gets every class into every set of 20 images or more; the others are drawn at random.

    Background: a muted, low-saturation field with low-frequency shading and grain, plus a few muted
    blobs and strokes (distractors with edges but no object colour). Objects: 2-3 per image, large
    (radius 18-42 % of the short side), each in its class's saturated colours and texture.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = _muted_colour(rng, 80, 170, 12) + 30.0 * _smooth_noise(rng, height, width, 4)[..., None]
    image = image + 8.0 * np.stack([_smooth_noise(rng, height, width, 3) for _ in range(3)], axis=-1)
    image += 12.0 * _smooth_noise(rng, height, width, max(6, width // 10))[..., None]
    label = np.zeros((height, width), dtype=np.uint8)
    instances = np.zeros((height, width), dtype=np.int32)
    size = min(height, width)

    for _ in range(int(rng.integers(2, 6))):  # clutter
        colour = _muted_colour(rng, 40, 220, 18)
        if rng.random() < 0.5:
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            r = rng.uniform(0.03, 0.1) * size
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            p0 = (rng.uniform(0, height), rng.uniform(0, width))
            p1 = (p0[0] + rng.normal(0, 0.3 * size), p0[1] + rng.normal(0, 0.3 * size))
            blob = _segment_mask(yy, xx, p0, p1, rng.uniform(0.5, 1.5))
        image[blob] = colour

    for number in range(1, int(rng.integers(2, 4)) + 1):
        cls = int(rng.integers(1, _NUM_VOC_OBJECT_CLASSES + 1))
        if number == 1 and first_class is not None:
            cls = first_class
        style = _STYLES[cls - 1]
        radius = rng.uniform(0.18, 0.42) * size
        aspect = style["aspect"] * rng.uniform(0.85, 1.15)
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        theta = rng.uniform(0, 2 * np.pi)
        du, dv = xx - cx, yy - cy
        u = (du * np.cos(theta) + dv * np.sin(theta))
        v = (-du * np.sin(theta) + dv * np.cos(theta))
        mask = _shape_mask(style["family"], u / radius, v / (radius * aspect))
        if cls in _THIN_PART_CLASSES:
            for _ in range(int(rng.integers(1, 4))):
                angle = rng.uniform(0, 2 * np.pi)
                reach = radius * rng.uniform(1.2, 1.6)
                end = (cy + reach * np.sin(angle), cx + reach * np.cos(angle))
                mask |= _segment_mask(yy, xx, (cy, cx), end, rng.uniform(0.8, 1.6))
        if not mask.any():
            continue
        colour_a = style["colours"][0] + rng.normal(0, 8, 3)
        colour_b = style["colours"][1] + rng.normal(0, 8, 3)
        texture = _texture(style, u, v, rng)[..., None]
        shading = 1.0 + 0.1 * _smooth_noise(rng, height, width, 3)[..., None]
        appearance = (colour_a * (1 - texture) + colour_b * texture) * shading
        image[mask] = appearance[mask]
        label[mask] = cls
        instances[mask] = number
    return Scene(_finish(image, rng, noise_sigma=7.0), label, instances)


def voc_boundary_band(label: np.ndarray, width: int = 1) -> np.ndarray:
    """Label with VOC's 255 'void' band over object outlines (where neighbouring labels differ)."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    edge[:-1, :] |= label[1:, :] != label[:-1, :]
    if width > 1:
        edge = ndimage.binary_dilation(edge, iterations=width - 1)
    banded = label.copy()
    banded[edge] = 255
    return banded
