"""Table 6's FPS: IRNet-LC single scale, multi-scale, and multi-scale + dense CRF.

One timed step is the evaluation's own inference (`lc.evaluation.inference.run_protocol`, the code
that produces the mIoU of the same rows) for a batch at bench.image_size under the protocol of the
config (`lc.evaluation.inference.protocol_from_config`: evaluate.scales, evaluate.flip,
evaluate.fusion, evaluate.crf): per view resize, LC forward with prescribed routing masks (see
`lc.bench.models`), aligned upsampling, fusion; then the argmax or a dense CRF per image. Images
are the prepared VOC val images when a trained checkpoint supplies the masks, otherwise smooth
random images (the CRF's cost depends on the image content, and noise would overstate it).
The three settings are timed in the same interleaved rounds (`measure_interleaved`), so their
cost relative to single scale (`time_vs_single_scale`, the median of per-round ratios) is free of
a shared machine's drift; the paper's FPS give the same ratio (14.3 / 7.7 = 1.86, 14.3 / 1.0).
"""

from __future__ import annotations

import logging

import pandas as pd
import torch
import torch.nn.functional as F

from lc.bench.masks import RoutingMasks
from lc.bench.models import BenchSetup, build_network, prescribed_routing
from lc.bench.timing import measure_interleaved, paired_ratio
from lc.evaluation.inference import Protocol, View, protocol_from_config, resize_image, run_protocol
from lc.models.cascade import LayerCascade

__all__ = ["TABLE6_COLUMNS", "run_table6_bench", "table6_protocols"]

log = logging.getLogger(__name__)

TABLE6_COLUMNS = ["setting", "scales", "flip", "fusion", "crf", "ms_median", "ms_p25", "ms_p75", "fps",
                  "time_vs_single_scale", "device", "mask_source", "image_size", "runs"]


def _images(setup: BenchSetup) -> torch.Tensor:
    """Normalised (B, 3, S, S) images."""
    size = (setup.image_size, setup.image_size)
    if setup.masks is not None:
        picks = [setup.masks.images[b % len(setup.masks.images)] for b in range(setup.batch_size)]
        images = torch.stack([F.interpolate(im[None], size=size, mode="bilinear", align_corners=False)[0]
                              for im in picks])
    else:
        gen = torch.Generator().manual_seed(int(setup.cfg.get("seed", 0)))
        coarse = torch.rand(setup.batch_size, 3, 8, 8, generator=gen) * 2 - 1
        images = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
    return images.to(setup.device)


def table6_protocols(evaluate_cfg: dict) -> list[tuple[str, Protocol]]:
    """(setting, protocol) of Table 6's rows: the protocols of `lc evaluate`, plain, --multi-scale and
    --multi-scale --crf, from the same config."""
    return [("single_scale", protocol_from_config(evaluate_cfg)),
            ("multi_scale", protocol_from_config(evaluate_cfg, multi_scale=True)),
            ("multi_scale_crf", protocol_from_config(evaluate_cfg, multi_scale=True, crf=True))]


def _protocol_step(model: LayerCascade, routing: prescribed_routing, rho: float, protocol: Protocol,
                   masks: dict[View, list[RoutingMasks]], images: torch.Tensor):
    def step(i: int):
        def select(view: View) -> None:
            routing.select(i, masks[view])

        return run_protocol(model, images, protocol, rho=rho, on_view=select, router=routing)[0]

    return step


def run_table6_bench(setup: BenchSetup) -> pd.DataFrame:
    """FPS of LC at evaluate.rho under the three test protocols of Table 6."""
    ev = setup.cfg["evaluate"]
    rho = float(ev["rho"])
    settings = table6_protocols(ev)
    model = build_network("lc", setup.model_cfg, setup.device, rho)
    images = _images(setup)
    all_views = sorted({view for _, protocol in settings for view in protocol.views})
    masks = {view: setup.mask_sets_for(rho, model, tuple(resize_image(images[:1], view.scale).shape[-2:]),
                                       flip=view.flip)
             for view in all_views}
    routing = prescribed_routing(masks[all_views[0]])
    steps = {}
    for name, protocol in settings:
        log.info("bench table6: %s (scales %s, flip %s, fusion %s, crf %s)", name, protocol.scales,
                 protocol.flip, protocol.fusion, protocol.crf is not None)
        steps[name] = _protocol_step(model, routing, rho, protocol, masks, images)
    warmup = setup.warmup_for(masks[all_views[0]])
    log.info("timing %s in turn: %d warm-up and %d timed rounds", ", ".join(steps), warmup, setup.runs)
    timings = measure_interleaved(steps, setup.device, warmup, setup.runs)
    rows = []
    for name, protocol in settings:
        rows.append({"setting": name, "scales": " ".join(f"{s:g}" for s in protocol.scales),
                     "flip": protocol.flip, "fusion": protocol.describe()["fusion"],
                     "crf": protocol.crf is not None, **timings[name].row(setup.batch_size),
                     "time_vs_single_scale": paired_ratio(timings[name], timings["single_scale"]),
                     "device": setup.device_name, "mask_source": setup.mask_source,
                     "image_size": setup.image_size})
    return pd.DataFrame(rows)[TABLE6_COLUMNS]
