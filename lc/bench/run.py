"""`lc bench <kind>`: one entry point per command, from the config and the command's options to a CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lc.device import resolve_device
from lc.models.region_irnet import apply_region_config

__all__ = ["BENCH_KINDS", "apply_region_config", "run_benchmark", "run_op_benchmark", "speedup_lines"]

# The model-level benchmarks (`op`, the region-conv op alone, is `run_op_benchmark`).
BENCH_KINDS = ("models", "stages", "rho", "table6")


def run_op_benchmark(cfg: dict, out: str | Path, png: str | Path | None = None, device: str = "all",
                     warmup: int | None = None, runs: int | None = None,
                     threads: int | None = None) -> pd.DataFrame:
    """Region convolution against dense (`lc.bench.op`) on `device` ("all": the CPU, plus CUDA when
    usable); writes the CSV and its plot. A named device that cannot be used raises DeviceError."""
    from lc.bench.op import level_titles, run_op_bench, save_op_bench
    from lc.bench.timing import node_access

    apply_region_config(cfg)
    devices = None if device == "all" else [str(resolve_device(device))]
    table = run_op_bench(cfg, devices=devices, warmup=warmup, runs=runs, threads=threads)
    table["node_access"] = node_access()
    save_op_bench(table, out, png, level_titles(cfg))
    return table


def run_benchmark(kind: str, cfg: dict, full_cfg: dict, out: str | Path,
                  checkpoint: str | Path | None = None, device: str | None = None,
                  warmup: int | None = None, runs: int | None = None, threads: int | None = None,
                  paper_table1: pd.DataFrame | None = None,
                  fast_checkpoint: str | Path | None = None,
                  rho_checkpoints: dict[float, str | Path] | None = None) -> pd.DataFrame:
    """Run one model-level benchmark (`BENCH_KINDS`) and write its CSV atomically, with a
    `node_access` column (lc.bench.timing.node_access: did the timing have the node to itself).

    full_cfg: the config whose `model:` is "full size" (the paper preset's). paper_table1: the
    published Table 1, whose stage shares route LC when no trained checkpoint is given;
    fast_checkpoint: the LC model trained at evaluate.fast_rho (models and stages: LC fast's masks);
    rho_checkpoints: {rho: the LC model trained at rho} (rho: each rho's own masks).
    """
    from lc.bench.models import BenchSetup, run_models_bench
    from lc.bench.rho import run_rho_bench
    from lc.bench.stages import run_stages_bench
    from lc.bench.table6 import run_table6_bench
    from lc.bench.timing import check_threads, cpu_threads, node_access, write_csv

    runners = {"models": run_models_bench, "stages": run_stages_bench, "rho": run_rho_bench,
               "table6": run_table6_bench}
    if kind not in runners:
        raise ValueError(f"unknown benchmark {kind!r}; choose one of {', '.join(BENCH_KINDS)} (or op)")
    apply_region_config(cfg)
    threads = check_threads(cfg["bench"]["threads"] if threads is None else threads)
    with cpu_threads(threads):  # restored afterwards; the device description records it
        setup = BenchSetup.from_config(cfg, full_cfg["model"], checkpoint=checkpoint, device=device,
                                       warmup=warmup, runs=runs, paper_table1=paper_table1, threads=threads,
                                       fast_checkpoint=fast_checkpoint, rho_checkpoints=rho_checkpoints)
        table = runners[kind](setup)
    table["node_access"] = node_access()  # exclusive / shared (SLURM) / local
    write_csv(table, out)
    return table


def speedup_lines(table: pd.DataFrame) -> list[str]:
    """Measured vs FLOP-predicted speedup of LC over dense IRNet (Table 3's claim), one line per row."""
    return [f"{row['method']:>10} rho={row['rho']:<6g} speedup over dense IRNet: measured "
            f"x{row['speedup_vs_irnet']:.2f}, FLOP-predicted x{row['predicted_speedup_vs_irnet']:.2f} "
            f"(ratio {row['speedup_vs_irnet'] / row['predicted_speedup_vs_irnet']:.2f}; "
            "CPU target >= 0.9 at 256 px)"
            for row in table.to_dict("records") if row["method"] in ("lc", "lc_fast")]
