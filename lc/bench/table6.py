"""Table 6's FPS: IRNet-LC single scale, multi-scale (+ flip), and multi-scale + dense CRF.

One timed step is the whole inference protocol for a batch at bench.image_size: per scale (and
mirror image) resize, LC forward with prescribed routing masks (see `lc.bench.models`), upsample
the class probabilities to the image size and average; then either the argmax or a dense CRF
(pydensecrf2 with the `evaluate.crf` parameters) per image. Images are the prepared VOC val
images when a trained checkpoint supplies the masks, otherwise smooth random images (the CRF's
cost depends on the image content, and noise would overstate it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lc.bench.masks import RoutingMasks
from lc.bench.models import BenchSetup, build_network, prescribed_routing
from lc.bench.timing import measure
from lc.evaluation.crf import dense_crf
from lc.models.cascade import LayerCascade

__all__ = ["TABLE6_COLUMNS", "run_table6_bench"]

TABLE6_COLUMNS = ["setting", "scales", "flip", "crf", "ms_median", "ms_p25", "ms_p75", "fps", "device",
                  "mask_source", "image_size", "runs"]


def _images(setup: BenchSetup) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Normalised (B, 3, S, S) images and their uint8 (S, S, 3) versions for the CRF."""
    from lc.data import denormalize

    size = (setup.image_size, setup.image_size)
    if setup.masks is not None:
        picks = [setup.masks.images[b % len(setup.masks.images)] for b in range(setup.batch_size)]
        images = torch.stack([F.interpolate(im[None], size=size, mode="bilinear", align_corners=False)[0]
                              for im in picks])
    else:
        gen = torch.Generator().manual_seed(int(setup.cfg.get("seed", 0)))
        coarse = torch.rand(setup.batch_size, 3, 8, 8, generator=gen) * 2 - 1
        images = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
    return images.to(setup.device), [denormalize(im) for im in images]


def _views(scales: list[float], flip: bool) -> list[tuple[float, bool]]:
    return [(s, f) for s in scales for f in ((False, True) if flip else (False,))]


def _protocol_step(setup: BenchSetup, model: LayerCascade, routing: prescribed_routing, rho: float,
                   views: list[tuple[float, bool]], masks: dict[tuple[float, bool], list[RoutingMasks]],
                   images: torch.Tensor, rgb: list[np.ndarray], crf_cfg: dict | None):
    height, width = images.shape[-2:]

    def step(i: int):
        total = None
        for scale, flip in views:
            size = (round(height * scale), round(width * scale))
            x = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear",
                                                                     align_corners=False)
            if flip:
                x = x.flip(-1)
            routing.select(i, masks[(scale, flip)])
            probs = model(x, rho=rho, router=routing).probs
            probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            if flip:
                probs = probs.flip(-1)
            total = probs if total is None else total + probs
        probs = total / len(views)
        if crf_cfg is None:
            return probs.argmax(dim=1)
        probs = probs.float().cpu().numpy()
        return [dense_crf(rgb[b], probs[b], crf_cfg) for b in range(probs.shape[0])]

    return step


def run_table6_bench(setup: BenchSetup) -> pd.DataFrame:
    """FPS of LC at evaluate.rho under the three test protocols of Table 6."""
    ev = setup.cfg["evaluate"]
    rho = float(ev["rho"])
    multi = [float(s) for s in ev["scales"]]
    settings = [("single_scale", [1.0], False, False), ("multi_scale", multi, bool(ev["flip"]), False),
                ("multi_scale_crf", multi, bool(ev["flip"]), True)]
    model = build_network("lc", setup.model_cfg, setup.device, rho)
    images, rgb = _images(setup)
    size = images.shape[-2:]
    all_views = sorted({v for _, scales, flip, _ in settings for v in _views(scales, flip)})
    masks = {(s, f): setup.mask_sets_for(rho, model, (round(size[0] * s), round(size[1] * s)), flip=f)
             for s, f in all_views}
    rows = []
    routing = prescribed_routing(masks[all_views[0]])
    for name, scales, flip, crf in tqdm(settings, desc="bench table6", unit="setting"):
        step = _protocol_step(setup, model, routing, rho, _views(scales, flip), masks, images, rgb,
                              dict(ev["crf"]) if crf else None)
        warmup = setup.warmup_for(masks[all_views[0]])
        timing = measure(step, setup.device, warmup, setup.runs).row(setup.batch_size)
        rows.append({"setting": name, "scales": " ".join(f"{s:g}" for s in scales), "flip": flip,
                     "crf": crf, **timing,
                     "device": setup.device_name, "mask_source": setup.mask_source,
                     "image_size": setup.image_size})
    return pd.DataFrame(rows)[TABLE6_COLUMNS]
