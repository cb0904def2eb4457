"""`lc bench gpu-compile`: every Triton kernel variant a GPU run would build, compiled here for that GPU.

No GPU needed: `lc.ops.triton.aot.compile_only` routes the region ops through the Triton launchers on
CPU tensors and compiles each launch's variant for the target (Triton's compiler and its bundled
ptxas), launching nothing. The scenarios are what the GPU runs launch:
- the planned stages 2 and 3 of the paper's IRNet (inference), at every row bucket of batch 1 and 8
  at the benchmark's 64 x 64 map, in fp32 (TF32 off and on), bf16 and fp16;
- their training forward and backward (fp32, bf16 and fp16 autocast, batch 1, half and all pixels);
- ResNet-101's planned region stages 2 and 3 (its bottlenecks' registered ops, a quarter and all of
  the map) and the depthwise kernel at ConvNeXt-T's widths (fp32 and bf16).
Writes variants.csv (one row per compiled variant: constants, warps, shared memory against the
target's limit, registers, spilled bytes, launches, compile seconds, whether Triton's cache had it),
scenarios.csv and summary.txt. A scenario fails when a variant does not compile or does not fit the
target.

The variants land in Triton's on-disk cache (TRITON_CACHE_DIR, default ~/.triton/cache), keyed as a
GPU run keys them: run this where the GPU job will find that cache (a shared file system) and the
job loads them instead of compiling; `lc bench gpu-check` reports how many it loaded
(`lc.ops.triton.compile_log`). The key hashes Triton's own library and the kernels' source, so only
the same venv and checkout find them, and the tiles follow the SM count (pick h100 or h100-pcie to
match the card): any difference costs only the compile.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lc.bench.timing import write_csv
from lc.bench.train_step import fraction_mask
from lc.evaluation.progress import progress
from lc.models.irnet import IRNet
from lc.models.region_irnet import planned_tables, run_stage_compressed
from lc.models.region_plan import run_planned, stage_rows
from lc.ops.active_set import ActiveSet
from lc.ops.region_tables import bucket_sizes
from lc.ops.triton.aot import AOT_TARGETS, AotTarget, CompiledVariant, compile_only
from lc.ops.triton.compile_log import cache_dir

__all__ = ["CompileSetup", "run_gpu_compile"]

MODES = {"fp32": (torch.float32, False), "tf32": (torch.float32, True),
         "bf16": (torch.bfloat16, False), "fp16": (torch.float16, False)}
# ConvNeXt-T stage 3 / 4 depthwise widths (channels, taps)
CONVNEXT_DEPTHWISE = ((384, 49), (768, 49))


@dataclass
class CompileSetup:
    target: AotTarget
    width: float
    blocks: tuple[int, int, int]
    map_size: int
    batches: tuple[int, ...]
    modes: tuple[str, ...]
    buckets: int | None  # None: every bucket; k: the k largest (quick)

    @classmethod
    def make(cls, target: str, quick: bool) -> CompileSetup:
        if target not in AOT_TARGETS:
            raise ValueError(f"--target must be one of {sorted(AOT_TARGETS)}, got {target!r}")
        if quick:
            return cls(AOT_TARGETS[target], 0.0625, (1, 1, 1), 8, (1,), ("fp32", "bf16"), 2)
        return cls(AOT_TARGETS[target], 1.0, (5, 10, 5), 64, (1, 8), tuple(MODES), None)


@contextmanager
def _precision(mode: str):
    """The mode's dtype with torch's matmul TF32 switch set as the mode says (restored after)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = MODES[mode][1]
    try:
        yield MODES[mode][0]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _masks(batch: int, size: int, count: int, gen: torch.Generator) -> torch.Tensor:
    scores = torch.rand(batch * size * size, generator=gen)
    mask = torch.zeros(batch * size * size, dtype=torch.bool)
    mask[scores.argsort()[:count]] = True
    return mask.view(batch, size, size)


def _inference(setup: CompileSetup, net: IRNet, mode: str) -> None:
    """Planned stages 2 and 3 at every row bucket (stage 3 reading a full stage-2 source)."""
    gen = torch.Generator().manual_seed(0)
    with _precision(mode) as dtype, torch.inference_mode():
        for batch in setup.batches:
            pixels = batch * setup.map_size ** 2
            sizes = bucket_sizes(pixels)[-setup.buckets:] if setup.buckets else bucket_sizes(pixels)
            x = torch.zeros(batch, net.stage_channels[0], setup.map_size, setup.map_size)
            source = ActiveSet(torch.ones(batch, setup.map_size, setup.map_size, dtype=torch.bool))
            rows2 = torch.zeros(pixels, net.stage_channels[1], dtype=dtype)
            for rows in sizes:
                active = ActiveSet(_masks(batch, setup.map_size, rows, gen))
                plan, tables = planned_tables(net, 2, active, dtype, None, rows)
                run_planned(plan, stage_rows(x, None, dtype), tables)
                plan, tables = planned_tables(net, 3, active, dtype, source, rows)
                run_planned(plan, stage_rows(rows2, source, dtype), tables)


def _training(setup: CompileSetup, net: IRNet, mode: str) -> None:
    """Forward and backward of the planned stages 2 and 3 (autocast for the half types)."""
    gen = torch.Generator().manual_seed(1)
    size = setup.map_size
    with _precision(mode) as dtype, torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        for fraction in (0.5, 1.0):
            mask = fraction_mask((1, size, size), fraction, gen, "cpu")
            x = torch.zeros(1, net.stage_channels[0], size, size, requires_grad=True)
            feat2 = run_stage_compressed(net, 2, x, ActiveSet(mask), planned=True, graphs=False)
            feat3 = run_stage_compressed(net, 3, feat2, ActiveSet(mask), source=ActiveSet(mask), planned=True,
                                         graphs=False)
            feat3.float().sum().backward()


def _backbones(setup: CompileSetup, mode: str) -> None:
    """ResNet-101's planned region stages (the registered ops at its widths, its int64 neighbour
    tables) and the depthwise kernel at ConvNeXt-T's widths."""
    from lc.models.backbone_resnet import ResNetBackbone
    from lc.ops.triton.depthwise import depthwise_gather
    scale, size = setup.width, setup.map_size
    if setup.width < 1:  # quick: a narrow ResNet
        resnet = ResNetBackbone("resnet101", layers=(1, 1, 2, 1), channels=(16, 16, 32, 64), stem_width=16,
                                stage2_blocks=1)
    else:
        resnet = ResNetBackbone("resnet101")
    resnet = resnet.eval().fold_batchnorm()
    gen = torch.Generator().manual_seed(2)
    with _precision(mode) as dtype, torch.inference_mode():
        resnet.to(dtype)
        x = torch.zeros(1, resnet.stage_channels[0], size, size, dtype=dtype)
        for fraction in (0.25, 1.0):
            active = ActiveSet(fraction_mask((1, size, size), fraction, gen, "cpu"))
            feat2 = resnet.run_stage_region(2, x, active)
            resnet.run_stage_region(3, feat2, active, source=active)
        rows = 4096 if size >= 64 else 64
        for channels, taps in CONVNEXT_DEPTHWISE:
            channels = max(16, int(channels * scale))
            table = torch.zeros(rows, taps, dtype=torch.int32)
            depthwise_gather(torch.zeros(rows, channels, dtype=dtype), table,
                             torch.zeros(channels, taps, dtype=dtype), torch.zeros(channels, dtype=dtype))


def _scenarios(setup: CompileSetup, net: IRNet) -> list[tuple[str, Callable[[], None]]]:
    cases = [(f"inference/{mode}", lambda m=mode: _inference(setup, net, m)) for mode in setup.modes]
    cases += [(f"training/{mode}", lambda m=mode: _training(setup, net, m))  # fp16: lc train's AMP
              for mode in ("fp32", "bf16", "fp16") if mode in setup.modes]
    cases += [(f"backbones/{mode}", lambda m=mode: _backbones(setup, m))
              for mode in ("fp32", "bf16") if mode in setup.modes]
    return cases


def _variant_row(v: CompiledVariant, target: AotTarget, scenario: str) -> dict:
    fits = 0 <= v.shared_bytes <= target.max_shared_mem
    return {"scenario": scenario, "kernel": v.kernel, "dtype": v.signature.get("src_ptr", "").lstrip("*"),
            "constants": " ".join(f"{k}={val}" for k, val in v.constants.items()),
            "divisible_by_16": " ".join(v.aligned), "num_warps": v.num_warps, "num_stages": v.num_stages,
            "shared_bytes": v.shared_bytes,
            "shared_limit": target.max_shared_mem, "registers": v.registers, "spill_bytes": v.spill_bytes,
            "launches": v.launches, "compile_s": round(v.compile_s, 3), "cache_hit": v.cache_hit,
            "ok": fits and not v.error, "error": v.error or ("" if fits else "shared memory over the limit")}


def _summary(setup: CompileSetup, variants: pd.DataFrame, scenarios: pd.DataFrame, seconds: float) -> str:
    t = setup.target
    failed = scenarios[~scenarios["ok"]]
    lines = [f"lc bench gpu-compile: Triton kernels compiled for {t.name} (sm_{t.arch}, {t.sm_count} SMs, "
             f"{t.max_shared_mem} B shared per block) on this machine, nothing launched",
             f"network: IRNet width {setup.width}, blocks {setup.blocks}, map {setup.map_size}, "
             f"batches {setup.batches}, modes {setup.modes}",
             f"{len(variants)} variants in {len(scenarios)} scenarios, {seconds:.0f} s"]
    if len(variants):
        hits = int(variants["cache_hit"].sum())
        lines.append(f"Triton cache {cache_dir()}: {len(variants) - hits} variants compiled into it, {hits} "
                     "already there")
        spilled = variants[variants["spill_bytes"] > 0]
        spills = "; ".join(f"{r.kernel} {r.dtype} {r.constants}: {r.spill_bytes} B"
                           for r in spilled.itertuples())
        lines += [f"registers per thread: max {variants['registers'].max()}, median "
                  f"{variants['registers'].median():.0f}",
                  f"shared memory: max {variants['shared_bytes'].max()} B "
                  f"({100 * variants['shared_bytes'].max() / t.max_shared_mem:.0f}% of the limit)",
                  f"variants spilling registers: {len(spilled)}" + (f" ({spills})" if spills else "")]
    lines.append("PASS: every variant compiled and fits" if failed.empty else
                 "FAIL: " + "; ".join(f"{r.scenario}: {r.error}" for r in failed.itertuples()))
    return "\n".join(lines) + "\n"


def run_gpu_compile(out: str | Path, target: str = "h100", quick: bool = False) -> bool:
    """Compile every scenario's kernel variants for `target`; write the CSVs and summary.txt under
    `out`. True when every scenario compiled and fits."""
    setup = CompileSetup.make(target, quick)
    out = Path(out)
    torch.manual_seed(0)
    net = IRNet(width_mult=setup.width, block_counts=setup.blocks).eval()
    started = time.perf_counter()
    spans, scenario_rows = [], []
    with compile_only(setup.target) as variants:  # raises before anything is written where it cannot
        out.mkdir(parents=True, exist_ok=True)
        cases = _scenarios(setup, net)
        for name, run in progress(cases, len(cases), "gpu-compile", log_every=1, unit="scenario"):
            before, t0, error = len(variants), time.perf_counter(), ""
            try:
                run()
            except Exception as exc:  # a compile or resource error: recorded, the next scenario runs
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                (out / f"error_{name.replace('/', '_')}.txt").write_text(traceback.format_exc())
            spans.append((name, before, len(variants)))
            scenario_rows.append({"scenario": name, "new_variants": len(variants) - before,
                                  "seconds": round(time.perf_counter() - t0, 2), "error": error})
    # rows after the last scenario: a variant's launches count every scenario that reused it
    variant_rows = [_variant_row(v, setup.target, name)
                    for name, start, end in spans for v in variants[start:end]]
    for row, (_name, start, end) in zip(scenario_rows, spans, strict=True):
        bad = [r for r in variant_rows[start:end] if not r["ok"]]
        if bad and not row["error"]:
            row["error"] = f"{len(bad)} variant(s) do not fit: {bad[0]['error']}"
        row["ok"] = not row["error"]
    columns = ["scenario", "kernel", "dtype", "constants", "divisible_by_16", "num_warps", "num_stages",
               "shared_bytes", "shared_limit", "registers", "spill_bytes", "launches", "compile_s",
               "cache_hit", "ok", "error"]
    table = pd.DataFrame(variant_rows, columns=columns)
    scenarios = pd.DataFrame(scenario_rows)
    write_csv(table, out / "variants.csv")
    write_csv(scenarios, out / "scenarios.csv")
    summary = _summary(setup, table, scenarios, time.perf_counter() - started)
    (out / "summary.txt").write_text(summary)
    print(summary, end="")
    return bool(scenarios["ok"].all())
