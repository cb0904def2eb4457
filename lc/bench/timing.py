"""Speed measurement shared by every benchmark (`lc bench op|models|stages|rho|table6`).

- `measure`: warm-up, then timed runs under `torch.inference_mode`: on the CPU
  `torch.utils.benchmark.Timer` at the torch thread count the benchmark set (`--threads` /
  `bench.threads`), on the GPU one pair of CUDA events per call; median and spread (p25/p75) of
  the per-call times.
- Routing masks for timing LC without training it: `paper_share_masks` draws spatially coherent
  random blobs holding exactly the paper's Table 1 stage shares at a rho (the published table is
  passed in: this layer reads no report files); `TrainedMasks` takes them from a trained LC model
  run on real (prepared val) images. Either way a benchmark cycles through `bench.mask_sets`
  different mask sets over its timed runs.
- `write_csv`: the one atomic CSV writer of the bench CSVs (temp name, then rename).

The benchmarks themselves are in `lc.bench.op` (region conv), `lc.bench.models` (models, stages,
rho) and `lc.bench.table6`.
"""

from __future__ import annotations

import itertools
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from lc.data.io import atomic_path

__all__ = ["MASK_SOURCE_PAPER", "RoutingMasks", "Timing", "TrainedMasks", "device_name", "measure",
           "paper_share_masks", "paper_stage_shares", "resolve_device", "set_threads", "write_csv"]

MASK_SOURCE_PAPER = "paper_stage_shares"
# coarse grid of the random field whose upsampling makes the blobs (cells per image side)
BLOB_GRID = 6


# --- devices and timing -----------------------------------------------------------------------
# resolve_device and device_name move to lc.device (the cli area); evaluation imports them from
# here until then. Do not copy them.
def resolve_device(requested: str | None) -> torch.device:
    """'auto' (or None): CUDA when available, else the CPU; 'cuda' without a GPU is an error."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested (config `device:` or --device) but torch sees no GPU; "
                         "use --device cpu or auto")
    return torch.device(requested)


def device_name(device: torch.device) -> str:
    """What the CSVs record: the GPU's name, or the CPU model and the torch thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {model}, {torch.get_num_threads()} threads"


def set_threads(threads: int) -> None:
    """Set torch's CPU thread count for the benchmark (the value every timing runs and records)."""
    if int(threads) < 1:
        raise ValueError(f"benchmark threads must be >= 1, got {threads} (--threads or bench.threads)")
    torch.set_num_threads(int(threads))


@dataclass
class Timing:
    """Per-call times in ms of one benchmark case (on the CPU, the mean call of each timed block)."""

    times_ms: list[float]
    calls: int

    @property
    def median(self) -> float:
        return float(np.median(self.times_ms))

    @property
    def p25(self) -> float:
        return float(np.percentile(self.times_ms, 25))

    @property
    def p75(self) -> float:
        return float(np.percentile(self.times_ms, 75))

    def row(self, batch_size: int = 1) -> dict:
        """ms per forward (median, p25, p75), images per second at the median, timed calls."""
        return {"ms_median": self.median, "ms_p25": self.p25, "ms_p75": self.p75,
                "fps": 1e3 * batch_size / self.median, "runs": self.calls}


def _measure_cuda(step: Callable[[int], object], device: torch.device, runs: int) -> Timing:
    times = []
    for i in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(i)
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end))
    return Timing(times, runs)


def _measure_cpu(step: Callable[[int], object], runs: int) -> Timing:
    """`runs` samples of `torch.utils.benchmark.Timer.blocked_autorange(min_run_time=0)`: each
    is one untimed call (the library's block-size probe, which stops at one call) and one timed
    call. (One blocked_autorange over all runs would time blocks of 10-1000 calls of anything
    faster than ~10 ms, and its probe grows with the load of a shared machine.)"""
    timer = Timer(stmt="step(next(index))", globals={"step": step, "index": itertools.count()},
                  num_threads=torch.get_num_threads())
    samples = [timer.blocked_autorange(min_run_time=0.0) for _ in range(runs)]
    return Timing([1e3 * t for m in samples for t in m.times],
                  sum(len(m.raw_times) * m.number_per_run for m in samples))


def measure(step: Callable[[int], object], device: torch.device | str, warmup: int, runs: int) -> Timing:
    """Time `runs` calls of `step(i)` after `warmup` untimed ones, under inference_mode.

    i counts the warm-up calls from 0, then the measured calls (with their untimed companions on
    the CPU, see `_measure_cpu`) from 0 again. CUDA: each timed call between two events.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    device = torch.device(device)
    with torch.inference_mode():
        for i in range(warmup):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            return _measure_cuda(step, device, runs)
        return _measure_cpu(step, runs)


# --- routing masks ----------------------------------------------------------------------------
RoutingMasks = tuple[torch.Tensor, torch.Tensor]  # (stage-2 mask, stage-3 mask), (B, h, w) bool each


def paper_stage_shares(rho: float, table1: pd.DataFrame) -> tuple[float, float]:
    """(decided at stage 1, decided at stage 2) as fractions, from the paper's Table 1.

    table1: the published table (`lc.report.paper.load_paper_table(1)`: columns rho, stage1_pct,
    stage2_pct). Between the published thresholds the shares are interpolated linearly in rho;
    rho >= 1 means nothing leaves early.
    """
    if rho >= 1.0:
        return 0.0, 0.0
    table = table1.sort_values("rho")
    rhos = table["rho"].to_numpy(float)
    if not rhos[0] <= rho <= rhos[-1]:
        raise ValueError(f"rho {rho} lies outside the paper's Table 1 range [{rhos[0]}, {rhos[-1]}]; "
                         "its stage shares are unknown (give --checkpoint for a trained model's masks)")
    stage1 = float(np.interp(rho, rhos, table["stage1_pct"].to_numpy(float))) / 100
    stage2 = float(np.interp(rho, rhos, table["stage2_pct"].to_numpy(float))) / 100
    return stage1, stage2


def paper_share_masks(rho: float, table1: pd.DataFrame, batch: int, height: int, width: int,
                      generator: torch.Generator, device: torch.device | str = "cpu") -> RoutingMasks:
    """Stage-2 and stage-3 masks holding the paper's shares at rho, as spatially coherent blobs.

    One smooth random field per image; the round(share * h * w) highest pixels go on, so every
    image holds exactly the requested counts and the stage-3 pixels are a subset of stage 2's.
    """
    stage1, stage2 = paper_stage_shares(rho, table1)
    pixels = height * width
    passed2 = int(round((1.0 - stage1) * pixels))
    passed3 = int(round((1.0 - stage1 - stage2) * pixels))
    coarse = torch.rand(batch, 1, BLOB_GRID, BLOB_GRID, generator=generator)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    field = field + 1e-3 * torch.rand(field.shape, generator=generator)  # break ties
    ranks = field.flatten(1).argsort(dim=1, descending=True).argsort(dim=1)
    mask2 = (ranks < passed2).view(batch, height, width)
    mask3 = (ranks < passed3).view(batch, height, width)
    return mask2.to(device), mask3.to(device)


def mask_shares(masks: Sequence[RoutingMasks]) -> tuple[float, float]:
    """(stage1_pct, stage2_pct) of a list of mask sets: percent decided at stages 1 and 2."""
    passed2 = float(np.mean([float(m2.float().mean()) for m2, _ in masks]))
    passed3 = float(np.mean([float(m3.float().mean()) for _, m3 in masks]))
    return 100.0 * (1.0 - passed2), 100.0 * (passed2 - passed3)


class TrainedMasks:
    """Routing masks of a trained LC checkpoint on real images (prepared VOC val)."""

    def __init__(self, checkpoint: str | Path, cfg: dict, count: int, device: torch.device):
        from lc.data import build_dataset
        from lc.training.checkpoint import load_model

        self.checkpoint = Path(checkpoint)
        self.model = load_model(self.checkpoint, map_location=device).eval()
        if getattr(self.model, "variant", None) != "lc":
            raise ValueError(f"{self.checkpoint} holds a {getattr(self.model, 'variant', '?')!r} model; "
                             "routing masks need an LC checkpoint "
                             "(results/<preset>/runs/voc/lc/checkpoint.pt)")
        try:
            dataset = build_dataset(cfg, "voc", "val")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"masks from {self.checkpoint} need the prepared VOC val set: {exc} "
                                    f"(run `lc prepare voc --preset {cfg['preset']}`)") from exc
        if len(dataset) == 0:
            raise ValueError("the prepared VOC val list is empty; re-run `lc prepare voc`")
        self.images = [dataset[i]["image"] for i in range(min(count, len(dataset)))]
        self.device = device
        self.name = f"trained:{self.checkpoint}"

    def masks(self, rho: float, batch: int, image_hw: tuple[int, int], grid_hw: tuple[int, int],
              index: int, flip: bool = False) -> RoutingMasks:
        """The model's masks at rho for `batch` val images (starting at image `index`) resized to
        `image_hw`, on a (B, *grid_hw) grid (nearest resampling if the model's grid differs)."""
        picks = [self.images[(index * batch + b) % len(self.images)] for b in range(batch)]
        images = torch.stack([F.interpolate(im[None], size=image_hw, mode="bilinear", align_corners=False)[0]
                              for im in picks]).to(self.device)
        if flip:
            images = images.flip(-1)
        with torch.inference_mode():
            out = self.model(images, rho=rho)
        masks = []
        for mask in out.stage_masks[1:3]:
            if tuple(mask.shape[-2:]) != tuple(grid_hw):
                mask = F.interpolate(mask[:, None].float(), size=grid_hw, mode="nearest")[:, 0] > 0.5
            masks.append(mask)
        return masks[0], masks[1] & masks[0]


def routing_mask_sets(source: TrainedMasks | pd.DataFrame, rho: float, batch: int,
                      image_hw: tuple[int, int], grid_hw: tuple[int, int], count: int, seed: int,
                      device: torch.device, flip: bool = False) -> list[RoutingMasks]:
    """`count` mask sets at rho: from a trained model, or with the shares of a published Table 1."""
    if isinstance(source, TrainedMasks):
        return [source.masks(rho, batch, image_hw, grid_hw, i, flip) for i in range(count)]
    generator = torch.Generator().manual_seed(seed)
    return [paper_share_masks(rho, source, batch, *grid_hw, generator, device) for _ in range(count)]


# --- output -----------------------------------------------------------------------------------
def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a CSV atomically: a temp file in the same folder, then a rename."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return path
