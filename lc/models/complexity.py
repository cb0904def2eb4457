"""Model complexity: parameters and FLOPs per cascade stage, and the FLOP-predicted LC speedup.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on the dense forward of each stage
and of its head: one multiply-add = 2 FLOPs, convolutions and matrix products only (bias adds,
BatchNorm, activations and pooling are not counted, as in the usual GFLOPs figures). Counting runs
equally on the meta device, so full-size networks are measured without allocating them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from lc.models.backbone import Backbone

__all__ = ["FULL_SIZE_BLOCK_COUNTS", "count_flops", "count_parameters", "lc_cost_vs_irnet", "model_info_rows",
           "network_costs", "predicted_cost", "stage_costs"]

# The two readings of IRNet's depth: the Inception-v4 paper's schema (5/10/5) and timm / the
# TensorFlow release (10/20/10); the parameter count the LC paper reports tells which it used.
FULL_SIZE_BLOCK_COUNTS: tuple[tuple[int, int, int], ...] = ((5, 10, 5), (10, 20, 10))


def count_parameters(module: nn.Module | None, trainable_only: bool = False) -> int:
    """Number of parameter elements of `module` (0 for None); shared tensors count once."""
    if module is None:
        return 0
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def count_flops(fn, *args, **kwargs) -> tuple[int, object]:
    """(FLOPs, result) of calling fn(*args, **kwargs), under no_grad; 2 FLOPs per multiply-add."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return int(counter.get_total_flops()), result


def _is_backbone(model: object) -> bool:
    """A cascade backbone (lc.models.backbone), or anything with its two stage methods (a bare IRNet)."""
    return isinstance(model, Backbone) or (hasattr(model, "forward_stage")
                                           and hasattr(model, "stage_modules"))


def _backbone_and_heads(model: nn.Module, heads: Sequence[nn.Module | None] | None):
    """The IRNet and the three stage heads of a LayerCascade, or of an IRNet plus `heads`."""
    if _is_backbone(model):
        backbone = model
        heads = list(heads) if heads is not None else [None, None, None]
    elif _is_backbone(getattr(model, "backbone", None)):
        if heads is not None:
            raise ValueError("pass `heads` only with a bare IRNet; a LayerCascade brings its own")
        backbone = model.backbone
        heads = [getattr(model, f"head{k}", None) for k in (1, 2, 3)]
    else:
        raise TypeError(f"stage_costs needs an IRNet or a LayerCascade (with .backbone and "
                        f".head1-3), got {type(model).__name__}")
    if len(heads) != 3:
        raise ValueError(f"IRNet-LC has three stages, got {len(heads)} heads")
    # a truncated cascade (Model Cascade member) has only its first `depth` stages
    depth = int(getattr(model, "depth", 3))
    return backbone, heads[:depth]


def stage_costs(
    model: nn.Module,
    image_size: int | tuple[int, int],
    heads: Sequence[nn.Module | None] | None = None,
    batch_size: int = 1,
) -> list[dict]:
    """Parameters and FLOPs of stages 1, 2, 3 (backbone part + head) for one dense forward.

    `model` is a LayerCascade (backbone `IRNet`, heads `head1..head3`, a missing head counts 0;
    a truncated one gives only its `depth` stages) or an IRNet with `heads` given separately.
    Runs on the model's device; a model built under `torch.device("meta")` costs nothing to
    measure. Returns one dict per stage with keys
    `stage, backbone_params, head_params, params, backbone_flops, head_flops, flops,
    output_shape`; the stages' params and flops sum to the whole network's.
    """
    backbone, heads = _backbone_and_heads(model, heads)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    try:
        reference = next(backbone.parameters())
    except StopIteration as exc:
        raise ValueError("the backbone has no parameters") from exc
    x = torch.zeros(batch_size, getattr(backbone, "in_channels", 3), height, width,
                    device=reference.device, dtype=reference.dtype)
    was_training = model.training
    model.eval()  # costs of inference; also keeps BatchNorm statistics untouched
    rows = []
    try:
        for stage, head in enumerate(heads, start=1):
            backbone_flops, x = count_flops(backbone.forward_stage, stage, x)
            head_flops = count_flops(head, x)[0] if head is not None else 0
            backbone_params = sum(count_parameters(m) for _, m in backbone.stage_modules(stage))
            head_params = count_parameters(head)
            rows.append({
                "stage": stage,
                "backbone_params": backbone_params,
                "head_params": head_params,
                "params": backbone_params + head_params,
                "backbone_flops": backbone_flops,
                "head_flops": head_flops,
                "flops": backbone_flops + head_flops,
                "output_shape": tuple(x.shape),
            })
    finally:
        model.train(was_training)
    return rows


def predicted_cost(stage_flops: Sequence[float], active_fractions: Sequence[float]) -> dict:
    """FLOPs of a cascade whose stage k runs on `active_fractions[k]` of the pixels.

    cost = sum_k fraction_k * flops_k (region convolution makes a stage's cost proportional to its
    active pixels); stage 1 always sees every pixel, so fractions[0] must be 1, and a stage cannot
    see more pixels than the one before it. Returns `flops`, `dense_flops` (every stage on every
    pixel), `speedup` (dense / cascade) and `saving` (1 - cascade / dense).
    """
    flops = [float(f) for f in stage_flops]
    fractions = [float(f) for f in active_fractions]
    if len(flops) != len(fractions):
        raise ValueError(f"{len(flops)} stage FLOP counts but {len(fractions)} active fractions")
    if not flops:
        raise ValueError("predicted_cost needs at least one stage")
    if any(f < 0 for f in flops):
        raise ValueError(f"stage FLOPs must be >= 0, got {flops}")
    if any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError(f"active fractions must lie in [0, 1], got {fractions}")
    if abs(fractions[0] - 1.0) > 1e-9:
        raise ValueError(f"stage 1 processes every pixel: its fraction must be 1, got {fractions[0]}")
    if any(later > earlier + 1e-9 for earlier, later in zip(fractions[:-1], fractions[1:], strict=True)):
        raise ValueError(f"active fractions must not increase from stage to stage, got {fractions}")
    cascade = sum(f * a for f, a in zip(flops, fractions, strict=True))
    dense = sum(flops)
    return {
        "flops": cascade,
        "dense_flops": dense,
        "speedup": dense / cascade if cascade > 0 else float("inf"),
        "saving": 1.0 - cascade / dense if dense > 0 else 0.0,
    }


def lc_cost_vs_irnet(model_cfg: dict, num_classes: int, image_size: int | tuple[int, int],
                     active_fractions: Sequence[float]) -> dict:
    """FLOPs of IRNet-LC whose stages see `active_fractions` of the pixels, against dense IRNet.

    Dense IRNet is Table 3's baseline: the same backbone with one head, after stage 3 (the `irnet`
    variant), not the cascade run densely with all three heads. Built on the meta device. Returns
    `flops` (LC at the fractions), `irnet_flops` and `speedup` (irnet_flops / flops).
    """
    from lc.models.cascade import LayerCascade

    with torch.device("meta"):
        lc_rows = stage_costs(LayerCascade(num_classes, "lc", model_cfg), image_size)
        irnet_rows = stage_costs(LayerCascade(num_classes, "irnet", model_cfg), image_size)
    flops = predicted_cost([r["flops"] for r in lc_rows], active_fractions)["flops"]
    irnet_flops = float(sum(r["flops"] for r in irnet_rows))
    return {"flops": flops, "irnet_flops": irnet_flops,
            "speedup": irnet_flops / flops if flops > 0 else float("inf")}


def network_costs(model: nn.Module, image_size: int | tuple[int, int]) -> list[dict]:
    """Rows `stage, params, flops` for a whole network: one per stage then `total` for a cascade
    (anything `stage_costs` accepts), a single `total` row for any other image-to-logits model."""
    is_cascade = _is_backbone(model) or _is_backbone(getattr(model, "backbone", None))
    rows = []
    if is_cascade:
        rows = [{"stage": str(r["stage"]), "params": r["params"], "flops": r["flops"]}
                for r in stage_costs(model, image_size)]
        total_params, total_flops = sum(r["params"] for r in rows), sum(r["flops"] for r in rows)
    else:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        reference = next(model.parameters())
        was_training = model.training
        model.eval()
        try:
            x = torch.zeros(1, 3, height, width, device=reference.device, dtype=reference.dtype)
            total_flops = count_flops(model, x)[0]
        finally:
            model.train(was_training)
        total_params = count_parameters(model)
    return rows + [{"stage": "total", "params": total_params, "flops": total_flops}]


def model_info_rows(
    model_cfg: dict,
    full_model_cfg: dict,
    num_classes: int,
    image_size: int,
    full_image_size: int,
) -> list[dict]:
    """Per-stage params and GFLOPs of the configured IRNet-LC, of the full-size IRNet-LC at both
    FULL_SIZE_BLOCK_COUNTS (width 1, `full_model_cfg` otherwise) and of the Table 3 baselines.

    Everything is built on the meta device: no memory, no weights, a second or two in all.
    """
    from lc.models.cascade import LayerCascade
    from lc.models.deeplab_v2 import deeplab_v2
    from lc.models.segnet import segnet

    def cascade(cfg: dict) -> nn.Module:
        return LayerCascade(num_classes, "lc", cfg)

    networks = [("IRNet-LC (configured)", model_cfg, image_size, lambda: cascade(model_cfg))]
    for counts in FULL_SIZE_BLOCK_COUNTS:
        cfg = {**full_model_cfg, "width_mult": 1.0, "block_counts": list(counts)}
        networks.append(("IRNet-LC", cfg, full_image_size, lambda cfg=cfg: cascade(cfg)))
    networks.append(("DeepLab-v2", None, full_image_size, lambda: deeplab_v2(num_classes)))
    networks.append(("SegNet", None, full_image_size, lambda: segnet(num_classes)))

    rows = []
    for name, cfg, size, build in networks:
        with torch.device("meta"):
            model = build()
        for row in network_costs(model, size):
            rows.append({
                "network": name,
                "block_counts": "/".join(str(n) for n in cfg["block_counts"]) if cfg else "",
                "width_mult": float(cfg["width_mult"]) if cfg else 1.0,
                "num_classes": num_classes,
                "image_size": size,
                "stage": row["stage"],
                "params": row["params"],
                "params_m": row["params"] / 1e6,
                "gflops": row["flops"] / 1e9,
            })
    return rows
