"""Speed measurement shared by every benchmark (`lc bench op|models|stages|rho|table6`).

- `measure_interleaved`: several methods timed call by call in turn (the models, op and backbone
  benchmarks, whose speedups are per-round ratios: `paired_ratio`).
- `measure`: warm-up, then timed runs under `torch.inference_mode`: on the CPU
  `torch.utils.benchmark.Timer` at the torch thread count the benchmark set (`--threads` /
  `bench.threads`, by `cpu_threads`, which restores the previous count afterwards), on the GPU one
  pair of CUDA events per call; median and spread (p25/p75) of the per-call times.
- `write_csv`: the one atomic CSV writer of the bench CSVs (temp name, then rename).
- `node_access`: whether the timing had the machine to itself (the CSVs' `node_access` column).

The routing masks LC is timed with are in `lc.bench.masks`; the benchmarks in `lc.bench.op` (region
conv), `lc.bench.models` (Table 3), `lc.bench.stages`, `lc.bench.rho` and `lc.bench.table6`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.benchmark import Timer

from lc.data.io import write_csv as write_table_csv
from lc.evaluation.progress import progress

__all__ = ["Timing", "check_threads", "cpu_threads", "measure", "measure_interleaved", "node_access",
           "paired_ratio", "set_threads", "write_csv"]


# --- devices and timing -----------------------------------------------------------------------
def check_threads(threads: int) -> int:
    """A benchmark's CPU thread count, checked (>= 1)."""
    if int(threads) < 1:
        raise ValueError(f"benchmark threads must be >= 1, got {threads} (--threads or bench.threads)")
    return int(threads)


def set_threads(threads: int) -> None:
    """Set torch's CPU thread count for the benchmark (the value every timing runs and records)."""
    torch.set_num_threads(check_threads(threads))


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """torch's CPU thread count set to `threads` inside, and restored on the way out."""
    before = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    call, both step(i) for sample i, so the timed calls see i = 0..runs-1 as on the GPU. (One
    blocked_autorange over all runs would time blocks of 10-1000 calls of anything faster than
    ~10 ms, and its probe grows with the load of a shared machine.)"""
    index = itertools.chain.from_iterable((i, i) for i in itertools.count())
    timer = Timer(stmt="step(next(index))", globals={"step": step, "index": index},
                  num_threads=torch.get_num_threads())
    samples = [timer.blocked_autorange(min_run_time=0.0) for _ in range(runs)]
    return Timing([1e3 * t for m in samples for t in m.times],
                  sum(len(m.raw_times) * m.number_per_run for m in samples))


def measure(step: Callable[[int], object], device: torch.device | str, warmup: int, runs: int) -> Timing:
    """Time `runs` calls of `step(i)` after `warmup` untimed ones, under inference_mode.

    i counts the warm-up calls from 0, then the timed calls from 0 again (LC steps pick their mask
    set by it); on the CPU each timed call follows an untimed one with the same i (see
    `_measure_cpu`). CUDA: each timed call between two events.
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


def measure_interleaved(steps: Mapping[str, Callable[[int], object]], device: torch.device | str,
                        warmup: int, runs: int) -> dict[str, Timing]:
    """Time `runs` rounds of every step, one call of each per round in turn (after `warmup` such
    untimed rounds), under inference_mode; {name: Timing} with the calls in round order.

    Interleaving puts every method's i-th call in the same stretch of time, so a ratio of two
    methods' i-th calls is free of the drift of a shared machine (whose load moves dense IRNet's
    time by +-20% within a minute on the 2-core machines this was built on); the models benchmark
    reports the median of those per-round ratios. CPU: one perf_counter pair per call; CUDA: one
    pair of events per call, synchronised after it.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    times: dict[str, list[float]] = {name: [] for name in steps}
    with torch.inference_mode():
        for i in range(warmup):
            for step in steps.values():
                step(i)
        for i in progress(range(runs), runs, f"timing {len(steps)} cases in turn", log_every=10,
                          unit="round"):
            for name, step in steps.items():
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    torch.cuda.synchronize(device)
                    start.record()
                    step(i)
                    end.record()
                    torch.cuda.synchronize(device)
                    times[name].append(start.elapsed_time(end))
                else:
                    begin = time.perf_counter()
                    step(i)
                    times[name].append(1e3 * (time.perf_counter() - begin))
    return {name: Timing(t, runs) for name, t in times.items()}


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median over rounds of numerator[i] / denominator[i] (two timings of `measure_interleaved`)."""
    if len(numerator.times_ms) != len(denominator.times_ms):
        raise ValueError("paired_ratio needs two timings of the same interleaved rounds")
    return float(np.median(np.asarray(numerator.times_ms) / np.asarray(denominator.times_ms)))


# --- output -----------------------------------------------------------------------------------
def node_access() -> str:
    """`exclusive` (a SLURM job with the node to itself: sbatch --exclusive), `shared` (a SLURM job
    other jobs may share the node with), `local` (not a SLURM job: only the workflow's bench_slot
    keeps its other jobs away), `unknown` (a SLURM job squeue could not describe)."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return "local"
    squeue = shutil.which("squeue")
    try:  # %h: can the job's resources be oversubscribed? NO = exclusive
        answer = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%h"], capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip() if squeue else ""
    except (OSError, subprocess.SubprocessError):
        answer = ""
    return {"NO": "exclusive", "": "unknown"}.get(answer.upper(), "shared")


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """A benchmark CSV (6 significant digits), atomically (lc.data.io.write_csv)."""
    return write_table_csv(df, path, float_format="%.6g")
