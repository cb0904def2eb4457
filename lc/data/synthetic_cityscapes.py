"""Cityscapes-like street scenes drawn as labelled polygons (see lc.data.synthetic_scenes)."""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import id2label, name2label
from PIL import Image, ImageDraw

from lc.data.synthetic_scenes import Scene, _finish, _smooth_noise

# Photo-like appearance per class: two colours blended by a texture.
_APPEARANCE: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], str]] = {
    "unlabeled": ((20, 20, 20), (40, 40, 40), "noise"),
    "ego vehicle": ((30, 32, 38), (60, 62, 70), "gradient"),
    "rectification border": ((0, 0, 0), (5, 5, 5), "noise"),
    "road": ((88, 86, 92), (110, 108, 112), "fine"),
    "sidewalk": ((175, 140, 130), (140, 112, 105), "tiles"),
    "building": ((120, 105, 95), (60, 62, 70), "windows"),
    "wall": ((150, 145, 130), (130, 125, 115), "noise"),
    "fence": ((140, 120, 90), (90, 80, 60), "bars"),
    "pole": ((190, 190, 200), (150, 150, 160), "noise"),
    "traffic light": ((30, 30, 30), (200, 170, 40), "noise"),
    "traffic sign": ((220, 200, 30), (200, 40, 40), "noise"),
    "vegetation": ((60, 110, 40), (30, 70, 25), "fine"),
    "terrain": ((150, 160, 90), (120, 140, 70), "fine"),
    "sky": ((150, 190, 235), (200, 220, 240), "gradient"),
    "person": ((60, 50, 70), (180, 140, 120), "noise"),
    "rider": ((200, 60, 40), (60, 50, 70), "noise"),
    "car": ((40, 60, 140), (25, 28, 35), "noise"),
    "truck": ((220, 220, 210), (60, 60, 60), "noise"),
    "bus": ((230, 200, 40), (40, 50, 60), "windows"),
    "bicycle": ((20, 90, 150), (30, 30, 30), "noise"),
    "motorcycle": ((30, 30, 35), (200, 200, 210), "bars"),
    "train": ((40, 140, 120), (220, 225, 230), "windows"),
}
# Per-instance colour spread (x 25 per channel) of each object class: cars vary most, but stay bluish.
_INSTANCE_COLOURS = {"car": 0.6, "person": 0.5, "rider": 0.3, "truck": 0.3, "bus": 0.2, "bicycle": 0.3,
                     "motorcycle": 0.3, "train": 0.1}


class _Canvas:
    """Label and instance images drawn polygon by polygon, recording the polygons for the json."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.label = Image.new("L", (width, height), 0)
        self.instances = Image.new("I", (width, height), 0)
        self.polygons: list[tuple[str, list[list[int]]]] = []
        self._count: dict[str, int] = {}
        self._draw_label = ImageDraw.Draw(self.label)
        self._draw_instances = ImageDraw.Draw(self.instances)

    def new_instance(self, name: str) -> int:
        k = self._count.get(name, 0)
        self._count[name] = k + 1
        return name2label[name].id * 1000 + k

    def polygon(self, name: str, points, instance_id: int | None = None) -> None:
        pts = [[int(round(x)), int(round(y))] for x, y in points]
        label_id = name2label[name].id
        self._draw_label.polygon([tuple(p) for p in pts], fill=label_id)
        self._draw_instances.polygon([tuple(p) for p in pts], fill=instance_id or label_id)
        self.polygons.append((name, pts))

    def box(self, name: str, x0, y0, x1, y1, instance_id: int | None = None) -> None:
        self.polygon(name, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], instance_id)

    def ellipse(self, name: str, cx, cy, rx, ry, instance_id: int | None = None, n: int = 12) -> None:
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
        self.polygon(name, list(zip(cx + rx * np.cos(angles), cy + ry * np.sin(angles), strict=True)),
                     instance_id)


def _layout(rng: np.random.Generator, canvas: _Canvas) -> None:
    h, w = canvas.height, canvas.width
    horizon = h * rng.uniform(0.38, 0.5)
    vanish_x = w * rng.uniform(0.4, 0.6)
    canvas.box("sky", 0, 0, w, horizon)
    x = -rng.uniform(0, 0.1) * w
    while x < w:  # a row of buildings (sometimes a wall) along the horizon
        bw = rng.uniform(0.08, 0.25) * w
        top = horizon - rng.uniform(0.12, 0.4) * h
        canvas.box("wall" if rng.random() < 0.25 else "building", x, top, x + bw, horizon + 0.04 * h)
        x += bw
    for _ in range(int(rng.integers(2, 6))):
        canvas.ellipse("vegetation", rng.uniform(0, w), horizon - rng.uniform(0, 0.15) * h,
                       rng.uniform(0.06, 0.18) * w, rng.uniform(0.08, 0.2) * h, n=16)
    canvas.box("sidewalk", 0, horizon, w, h)
    road_half = rng.uniform(0.5, 0.75) * w  # the road's half width at the bottom edge
    canvas.polygon("road", [(vanish_x - 0.01 * w, horizon), (vanish_x + 0.01 * w, horizon),
                            (vanish_x + road_half, h), (vanish_x - road_half, h)])
    if rng.random() < 0.7:
        side = rng.choice([0.0, 1.0])
        canvas.polygon("terrain", [(side * w, horizon + 0.05 * h), (side * w, h * 0.85),
                                   (abs(side * w - 0.25 * w), h * 0.85)])
    if rng.random() < 0.6:
        fx = rng.uniform(0, 0.6) * w
        canvas.box("fence", fx, horizon - 0.08 * h, fx + rng.uniform(0.15, 0.35) * w, horizon + 0.06 * h)

    def ground_x(depth: float, offset: float) -> float:
        # x of a point `offset` road half-widths from the road centre at depth in (0, 1]
        return vanish_x + offset * road_half * depth

    for _ in range(int(rng.integers(1, 4))):  # poles with a sign or a light
        depth = rng.uniform(0.2, 0.9)
        foot = horizon + depth * (h - horizon)
        px = ground_x(depth, rng.choice([-1.0, 1.0]) * rng.uniform(1.05, 1.4))
        pole_w = max(3.0, 0.016 * w * depth)
        top = foot - depth * 0.7 * h
        canvas.box("pole", px - pole_w / 2, top, px + pole_w / 2, foot)
        s = max(4.0, 0.08 * w * depth)
        if rng.random() < 0.5:
            canvas.polygon("traffic sign", [(px - s, top), (px + s, top), (px, top - 1.6 * s)])
        else:
            canvas.box("traffic light", px - s / 2, top - 2 * s, px + s / 2, top)

    vehicles = sorted(rng.uniform(0.3, 1.0, size=int(rng.integers(1, 5))))
    for depth in vehicles:  # far to near, so nearer ones occlude
        name = str(rng.choice(["car"] * 4 + ["truck", "bus", "train"]))
        foot = horizon + depth * (h - horizon)
        cx = ground_x(depth, rng.uniform(-0.7, 0.7))
        half = {"car": 0.14, "train": 0.28}.get(name, 0.18) * w * depth
        body_h = (0.14 if name == "car" else 0.3) * h * depth
        ident = canvas.new_instance(name)
        canvas.polygon(name, [(cx - half, foot), (cx + half, foot), (cx + half, foot - body_h),
                              (cx + 0.6 * half, foot - body_h * (1.6 if name == "car" else 1.0)),
                              (cx - 0.6 * half, foot - body_h * (1.6 if name == "car" else 1.0)),
                              (cx - half, foot - body_h)], ident)

    for depth in sorted(rng.uniform(0.3, 1.0, size=int(rng.integers(1, 5)))):  # people, some riding
        foot = horizon + depth * (h - horizon)
        riding = rng.random() < 0.35
        px = ground_x(depth, rng.choice([-1.0, 1.0]) * rng.uniform(0.9, 1.3) if not riding
                      else rng.uniform(-0.8, 0.8))
        height = 0.5 * h * depth
        if riding:
            ride = str(rng.choice(["bicycle", "bicycle", "motorcycle"]))
            ident = canvas.new_instance(ride)
            r = 0.2 * height
            canvas.ellipse(ride, px - 1.2 * r, foot - r, r, r, ident)
            canvas.ellipse(ride, px + 1.2 * r, foot - r, r, r, ident)
            if ride == "motorcycle":
                canvas.box(ride, px - 1.2 * r, foot - 1.6 * r, px + 1.2 * r, foot - 0.8 * r, ident)
            foot -= r
        name = "rider" if riding else "person"
        ident = canvas.new_instance(name)
        body_w = max(3.0, 0.25 * height)
        shoulders = foot - 0.85 * height
        canvas.polygon(name, [(px - body_w / 2, shoulders), (px + body_w / 2, shoulders),
                              (px + body_w / 3, foot), (px - body_w / 3, foot)], ident)
        canvas.ellipse(name, px, foot - 0.92 * height, body_w * 0.45, body_w * 0.5, ident, n=8)

    hood = h * rng.uniform(0.88, 0.94)  # ego vehicle hood and rectification border: void in trainIds
    canvas.polygon("ego vehicle", [(0, h), (0, hood + 0.04 * h), (w / 2, hood), (w, hood + 0.04 * h), (w, h)])
    border = max(1, round(0.01 * w))
    for box in ((0, 0, border, h), (w - border, 0, w, h), (0, h - border, w, h)):
        canvas.box("rectification border", *box)


def _paint(rng: np.random.Generator, label: np.ndarray, instances: np.ndarray) -> np.ndarray:
    h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    textures = {
        "noise": 0.5 + 0.5 * _smooth_noise(rng, h, w, max(4, w // 16)),
        "fine": np.clip(0.5 + 0.5 * _smooth_noise(rng, h, w, max(8, w // 4)), 0, 1),
        "gradient": yy / max(h - 1, 1),
        "tiles": ((np.sin(xx * 0.9) * np.sin(yy * 0.9)) > 0).astype(np.float64),
        "windows": ((np.sin(xx * 0.8) > 0.3) & (np.sin(yy * 0.7) > 0.2)).astype(np.float64),
        "bars": (np.sin(xx * 1.3) > 0.4).astype(np.float64),
    }
    # Per-labelId lookup tables, so painting is one gather instead of a pass per class.
    names = list(textures)
    colour_a, colour_b = np.zeros((256, 3)), np.zeros((256, 3))
    texture_of = np.zeros(256, dtype=np.intp)
    for name, (first, second, texture_name) in _APPEARANCE.items():
        label_id = name2label[name].id
        colour_a[label_id], colour_b[label_id] = first, second
        texture_of[label_id] = names.index(texture_name)
    stack = np.stack([textures[n] for n in names])
    t = np.take_along_axis(stack, texture_of[label][None], axis=0)[0][..., None]
    image = colour_a[label] * (1 - t) + colour_b[label] * t
    # Per-instance colour variation (instance ids >= 1000 are objects), drawn in instance-id order.
    ids, inverse = np.unique(instances, return_inverse=True)
    shifts = np.zeros((len(ids), 3))
    for k, instance_id in enumerate(ids):
        if instance_id >= 1000:
            name = id2label[int(instance_id) // 1000].name
            shifts[k] = rng.normal(0.0, 25.0 * _INSTANCE_COLOURS.get(name, 0.3), size=3)
    image += shifts[inverse.reshape(label.shape)]
    illumination = 1.0 + 0.12 * _smooth_noise(rng, h, w, 3)[..., None]
    return _finish(image * illumination, rng, noise_sigma=5.0)


def cityscapes_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """A street scene: labelIds, instanceIds (labelId*1000+k for objects) and its polygons."""
    canvas = _Canvas(height, width)
    _layout(rng, canvas)
    label = np.asarray(canvas.label, dtype=np.uint8)
    instances = np.asarray(canvas.instances, dtype=np.int32)
    return Scene(_paint(rng, label, instances), label, instances, canvas.polygons)
