"""Region-convolution speed: one full-width IRNet stage 2, and single convs, dense vs region paths.

Levels: `stage2` (mixed_6a + the Block17 repeats at width 1, the config's stage-2 block count),
`conv3x3` (mixed_6a.branch1[1], 256 -> 256) and `conv1x7` (a Block17's 1x7 conv, 128 -> 160,
dilation 2). Implementations:
- dense_nchw / dense_channels_last: the plain dense layer (eval, no_grad; the stage with its BN
  folded) in either memory format; the faster of the two is the baseline `speedup` refers to;
- masked_dense: the dense reference, every output multiplied by the mask;
- gather (convs): `region_conv2d(impl="gather")`, dense input to dense output;
- compressed: stage: `ActiveSet` + `run_stage_compressed`, dense stage input to the (N, C) output
  (what the cascade passes on); convs: `compressed_conv` on (N, C) features, tables prebuilt;
- gemm_floor (stage): the planned stage's GEMMs alone, same shapes and weights (`lc.bench.gemm_floor`):
  its speedup_x_fraction is the most the stage could reach with this BLAS and no other cost.
Masks hold exactly round(f * H * W) random pixels per image. Every case of a level is timed in
the same interleaved rounds (`lc.bench.timing.measure_interleaved`), at `bench.threads` CPU threads
(or `--threads`); times are medians, a speedup is the median per-round ratio to the faster dense
layout (`paired_ratio`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from lc.bench.gemm_floor import stage_floor
from lc.bench.timing import cpu_threads, measure_interleaved, paired_ratio, write_csv
from lc.data.io import atomic_path
from lc.evaluation.progress import progress
from lc.models.irnet import IRNet, fold_batchnorm
from lc.models.region_irnet import run_stage_compressed, run_stage_masked_dense
from lc.ops.active_set import ActiveSet
from lc.ops.region_conv import compressed_conv, region_conv2d

COLUMNS = ["level", "impl", "active_fraction", "ms_median", "speedup", "speedup_x_fraction", "device"]
ALWAYS_FRACTIONS = (0.1, 0.25, 0.5, 1.0)

__all__ = ["COLUMNS", "level_titles", "random_mask", "run_op_bench", "save_op_bench"]


def random_mask(batch: int, height: int, width: int, fraction: float, generator: torch.Generator,
                device: str = "cpu") -> torch.Tensor:
    """(B, H, W) bool with exactly round(fraction * H * W) active pixels per image."""
    count = int(round(fraction * height * width))
    scores = torch.rand(batch, height * width, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < count).view(batch, height, width).to(device)


def _dense_variants(module_fn: Callable[[str], Callable[[], object]]) -> dict[str, Callable[[], object]]:
    return {"dense_nchw": module_fn("nchw"), "dense_channels_last": module_fn("channels_last")}


def _as_format(t: torch.Tensor, fmt: str) -> torch.Tensor:
    layout = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    return t.contiguous(memory_format=layout)


def _stage_cases(net: IRNet, x: torch.Tensor, fractions: Sequence[float], gen: torch.Generator,
                 device: str):
    """(impl, fraction, fn) for the stage-2 level; dense first."""
    inputs = {fmt: _as_format(x, fmt) for fmt in ("nchw", "channels_last")}
    folded = fold_batchnorm(copy.deepcopy(net))  # the dense baseline at its best: BN folded
    nets = {"nchw": folded, "channels_last": copy.deepcopy(folded).to(memory_format=torch.channels_last)}

    def dense(fmt: str):
        return lambda: nets[fmt].forward_stage(2, inputs[fmt])

    cases = [(impl, 1.0, fn) for impl, fn in _dense_variants(dense).items()]
    for f in fractions:
        mask = random_mask(x.shape[0], x.shape[2], x.shape[3], f, gen, device)
        cases.append(("masked_dense", f, lambda m=mask: run_stage_masked_dense(net, 2, x, m)))
        cases.append(("compressed", f, lambda m=mask: run_stage_compressed(net, 2, x, ActiveSet(m))))
        floor = stage_floor(lambda m=mask: run_stage_compressed(net, 2, x, ActiveSet(m), graphs=False))
        if floor is not None:
            cases.append(("gemm_floor", f, floor))
    return cases


def _conv_cases(weight: torch.Tensor, bias: torch.Tensor, padding, dilation, x: torch.Tensor,
                fractions: Sequence[float], gen: torch.Generator, device: str):
    inputs = {fmt: _as_format(x, fmt) for fmt in ("nchw", "channels_last")}
    weights = {fmt: _as_format(weight, fmt) for fmt in ("nchw", "channels_last")}

    def dense(fmt: str):
        return lambda: F.conv2d(inputs[fmt], weights[fmt], bias, 1, padding, dilation)

    cases = [(impl, 1.0, fn) for impl, fn in _dense_variants(dense).items()]
    for f in fractions:
        mask = random_mask(x.shape[0], x.shape[2], x.shape[3], f, gen, device)
        active = ActiveSet(mask)
        feat = active.gather(x)
        compressed_conv(feat, active, weight, bias, padding, dilation)  # build the table once
        for impl, path in (("masked_dense", "reference"), ("gather", "gather")):
            cases.append((impl, f, lambda m=mask, p=path: region_conv2d(x, weight, bias, m, 1, padding,
                                                                         dilation, impl=p)))
        cases.append(("compressed", f, lambda a=active, ft=feat: compressed_conv(ft, a, weight, bias,
                                                                                 padding, dilation)))
    return cases


def _op_net(cfg: dict) -> IRNet:
    """The full-width IRNet whose stage 2 (at the config's block count) the benchmark times."""
    return IRNet(width_mult=1.0, block_counts=(1, int(cfg["model"]["block_counts"][1]), 1), output_stride=8)


def _single_convs(net: IRNet) -> dict[str, torch.nn.Conv2d]:
    """The conv levels: a reduction's 3x3 and a residual block's dilated 1x7."""
    return {"conv3x3": net.mixed_6a.branch1[1].conv, "conv1x7": net.repeat_1[0].branch1[1].conv}


def level_titles(cfg: dict) -> dict[str, str]:
    """Plot titles of the benchmark levels, read off the layers they time."""
    with torch.device("meta"):
        net = _op_net(cfg)
    titles = {"stage2": f"stage 2 (mixed_6a + {len(net.repeat_1)} Block17), width 1"}
    where = {"conv3x3": "mixed_6a", "conv1x7": "Block17"}
    for level, conv in _single_convs(net).items():
        kh, kw = conv.kernel_size
        dilation = f", dilation {conv.dilation[0]}" if conv.dilation != (1, 1) else ""
        titles[level] = (f"{kh}x{kw} conv {conv.in_channels} -> {conv.out_channels}{dilation} "
                         f"({where[level]})")
    return titles


def run_op_bench(cfg: dict, devices: Sequence[str] | None = None, warmup: int | None = None,
                 runs: int | None = None, threads: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Time the op benchmark on each device (default: cpu, plus cuda when present) at `threads`
    CPU threads (default `bench.threads`)."""
    bench = cfg["bench"]
    size = int(bench["op_image_size"])
    warmup = int(bench["warmup"] if warmup is None else warmup)
    runs = int(bench["runs"] if runs is None else runs)
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    fractions = sorted({float(f) for f in bench["fractions"]} | set(ALWAYS_FRACTIONS))
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with cpu_threads(int(bench["threads"] if threads is None else threads)):
        for device in devices:
            gen = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)
            net = _op_net(cfg).eval().to(device)
            stage_in = torch.randn(1, net.stage_channels[0], size, size, generator=gen).relu().to(device)
            levels = {"stage2": _stage_cases(net, stage_in, fractions, gen, device)}
            for level, conv in _single_convs(net).items():
                x = torch.randn(1, conv.in_channels, size, size, generator=gen).to(device)
                bias = torch.randn(conv.out_channels, generator=gen).to(device)
                levels[level] = _conv_cases(conv.weight.detach(), bias, conv.padding, conv.dilation, x,
                                            fractions, gen, device)
            for level, cases in progress(list(levels.items()), len(levels), f"bench op ({device})",
                                         log_every=1, unit="level"):
                steps = {(impl, fraction): (lambda _i, fn=fn: fn()) for impl, fraction, fn in cases}
                timings = measure_interleaved(steps, device, warmup, runs)
                dense = min((key for key in timings if key[0].startswith("dense")),
                            key=lambda key: timings[key].median)  # the faster dense layout
                for (impl, fraction), timing in timings.items():
                    rows.append({"level": level, "impl": impl, "active_fraction": fraction,
                                 "ms_median": timing.median, "device": device,
                                 "speedup": paired_ratio(timings[dense], timing)})
    df = pd.DataFrame(rows)
    df["speedup_x_fraction"] = df.speedup * df.active_fraction
    return df[COLUMNS]


def save_op_bench(df: pd.DataFrame, out_csv: str | Path, out_png: str | Path | None = None,
                  titles: dict[str, str] | None = None) -> None:
    """Write the CSV and a speedup-vs-fraction plot (with the ideal 1/f line), each atomically.

    titles: panel title per level (`level_titles(cfg)`; default: the level names)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_csv = write_csv(df, out_csv)
    titles = titles or {}

    out_png = Path(out_png) if out_png is not None else out_csv.with_suffix(".png")
    region = df[df.impl.isin(["compressed", "gather", "gemm_floor"])]
    levels = list(dict.fromkeys(df.level))
    fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 3.6), squeeze=False)
    fractions = sorted(df.active_fraction.unique())
    for ax, level in zip(axes[0], levels, strict=True):
        ax.plot(fractions, [1 / f for f in fractions], "k--", lw=1, label="ideal 1/f")
        for (device, impl), part in region[region.level == level].groupby(["device", "impl"]):
            part = part.sort_values("active_fraction")
            style = ":" if impl == "gemm_floor" else "-"
            ax.plot(part.active_fraction, part.speedup, "o" + style, ms=3, label=f"{impl} ({device})")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set(xscale="log", yscale="log", xlabel="share of pixels computed (active fraction)",
               ylabel="speedup over the fastest dense conv")
        ax.set_title(titles.get(level, level), fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("region convolution: speedup over the best dense implementation\n"
                 + "; ".join(sorted(df.device.unique())), fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
