"""`lc bench train`: seconds per training iteration of DSN and LC (one LayerCascade training step).

A step is forward, the cascade loss, backward and an SGD update; LC is routed by prescribed masks
at the paper's stage shares as measured on the H100 (`SHARES`), DSN runs every stage densely. AMP
(bf16 autocast, so no loss scaling; `lc train` uses fp16 with a GradScaler) on CUDA, model and
images channels_last. The first iteration (Triton JIT compile, cuDNN autotuning, allocator warm-up)
is reported apart from the steady s/iter. `lc bench gpu-check` runs the same code (its train section).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lc.bench.timing import write_csv

__all__ = ["SHARES", "TrainBench", "fraction_mask", "run_train_bench", "train_step_times"]

# paper stage shares (gpu-h100 bench_stages: LC 77% / 48%, LC fast 44% / 15% of pixels)
SHARES = {"lc": (0.77, 0.48), "lc_fast": (0.44, 0.15)}
VARIANTS = ("dsn", "lc")


def fraction_mask(shape, fraction: float, gen: torch.Generator, device,
                  within: torch.Tensor | None = None) -> torch.Tensor:
    """(B, h, w) bool with round(fraction * h * w) pixels on per image (inside `within` first)."""
    scores = torch.rand(shape, generator=gen)
    if within is not None:
        scores = torch.where(within.cpu(), scores, torch.full_like(scores, 2.0))
    count = int(round(fraction * shape[1] * shape[2]))
    ranks = scores.flatten(1).argsort(1).argsort(1)
    return (ranks < count).view(shape).to(device)


@dataclass
class TrainBench:
    """What one training-step timing runs: the network, the batch and the precision."""

    device: torch.device
    batch: int = 8
    crop: int = 512
    amp: bool = True             # bf16 autocast (CUDA only)
    width: float = 1.0           # model.width_mult
    blocks: tuple[int, int, int] = (5, 10, 5)
    head_channels: int = 128
    iterations: int = 6          # the first one reported apart

    @classmethod
    def quick(cls, device: torch.device) -> TrainBench:
        """Tiny shapes: what CI runs (`--device cpu --quick`)."""
        return cls(device, batch=1, crop=64, width=0.0625, blocks=(1, 2, 2), head_channels=16, iterations=2)


def train_step_times(bench: TrainBench) -> pd.DataFrame:
    """One row per variant: first_iter_s (Triton JIT compiles and warm-up), s_per_iter (median of the
    others), compile_s (the first iteration's excess over the median)."""
    from lc.models.cascade import LayerCascade
    from lc.training.losses import cascade_loss

    if bench.crop % 8:
        raise ValueError(f"crop must be a multiple of 8 (the backbone's output stride), got {bench.crop}")
    if bench.iterations < 2:
        raise ValueError(f"iterations must be >= 2 (the first is reported apart), got {bench.iterations}")
    cuda = bench.device.type == "cuda"
    amp = bench.amp and cuda
    model_cfg = {"width_mult": bench.width, "block_counts": list(bench.blocks), "freeze_bn": True,
                 "head_channels": bench.head_channels, "head_kernel": 3}
    size = bench.crop // 8
    rows = []
    for variant in VARIANTS:
        torch.manual_seed(0)
        # channels_last on both sides, as the inference benchmarks run (cuDNN's faster layout)
        model = LayerCascade(21, variant, model_cfg).to(bench.device, memory_format=torch.channels_last)
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        gen = torch.Generator().manual_seed(5)
        images = torch.randn(bench.batch, 3, bench.crop, bench.crop, generator=gen).to(bench.device)
        images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 21, (bench.batch, bench.crop, bench.crop), generator=gen).to(bench.device)
        shape = (bench.batch, size, size)
        m2 = fraction_mask(shape, SHARES["lc"][0], gen, bench.device)
        masks = {2: m2, 3: fraction_mask(shape, SHARES["lc"][1], gen, bench.device, within=m2)}
        router = (lambda stage, proposed, m=masks: m[stage]) if variant == "lc" else None
        times = []
        for _ in range(bench.iterations):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast(bench.device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(images, router=router)
            loss = cascade_loss(out.stage_logits, out.stage_masks, labels, [1.0, 1.0, 1.0]).total
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        steady = statistics.median(times[1:])
        rows.append({"variant": variant, "device": str(bench.device), "batch": bench.batch,
                     "crop": bench.crop, "amp": amp, "iterations": len(times) - 1,
                     "first_iter_s": times[0], "s_per_iter": steady, "compile_s": max(times[0] - steady, 0)})
    return pd.DataFrame(rows)


def run_train_bench(out: str | Path, bench: TrainBench) -> pd.DataFrame:
    """`train_step_times` written to the CSV `out`."""
    table = train_step_times(bench)
    write_csv(table, out)
    return table
