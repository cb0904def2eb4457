"""`lc bench gpu-check`: the one GPU check of region execution (<= 6 minutes on one GPU).

Sections, each a CSV in the output folder (the summary and plot: `lc.bench.gpu_summary`):
- tests.csv: the `gpu`-marked tests (pytest in a subprocess; CUDA only);
- equality.csv: graphed vs eager planned stages (CUDA; on the CPU: planned vs per-layer path);
- launches.csv: ops dispatched per planned stage (aten + registered-op calls), eager and graphed;
  the host time of one eager planned stage;
- stage_grid.csv: stage efficiency = (dense ms / region ms) x active fraction, dense at its best
  (BN folded, channels_last, CUDA-graphed), the region stage planned and graphed, tables built;
- end_to_end.csv: backbone stages 1-3 of dense IRNet vs LC and LC fast at the paper's stage shares
  (eager and graphed), with the time-predicted speedup T_dense / (T1 + f2*T2 + f3*T3);
- train.csv: s/iter of a LayerCascade training step (forward, cascade loss, backward, SGD), dsn
  vs lc at the paper's stage shares, AMP, the first (compiling) iteration reported apart;
- triton_cache.csv: the Triton variants this process compiled and those it loaded from
  TRITON_CACHE_DIR (`lc bench gpu-compile` fills that cache without a GPU; the GPU tests'
  subprocess is not counted).
`--device cpu --quick` runs the same code on a tiny network and map (what CI proves).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lc.bench.launches import OpCounter
from lc.bench.timing import measure, write_csv
from lc.bench.train_step import SHARES, TrainBench, train_step_times
from lc.bench.train_step import fraction_mask as _mask
from lc.models.irnet import IRNet, fold_batchnorm
from lc.models.region_graphs import GraphedCall
from lc.models.region_irnet import run_stage_compressed
from lc.ops.active_set import ActiveSet
from lc.ops.triton.compile_log import log_compiles

__all__ = ["CheckSetup", "run_gpu_check"]

GPU_TEST_FILES = ("tests/test_gpu_region.py", "tests/test_library_ops.py", "tests/test_triton_kernel.py",
                  "tests/test_triton_depthwise.py", "tests/test_cli.py")
# of the 6-minute budget (~60-80 Triton compiles on an empty cache, which warm the on-disk cache
# for the sections after it); past it the check reports a failure and goes on
GPU_TESTS_TIMEOUT_S = 240
BUDGET_S = 330  # a section that would start later is skipped: the check ends near 6 minutes


@dataclass
class CheckSetup:
    device: torch.device
    quick: bool
    map_size: int
    batches: tuple[int, ...]
    fractions: tuple[float, ...]
    modes: tuple[str, ...]
    width: float
    blocks: tuple[int, int, int]
    warmup: int
    runs: int
    train_batch: int
    deadline: float | None = None  # time.perf_counter() past which the stage grid stops adding cells

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    @classmethod
    def make(cls, device: str, quick: bool) -> CheckSetup:
        dev = torch.device(device)
        if quick:
            return cls(dev, True, 8, (1,), (0.25, 1.0), ("tf32",), 0.0625, (1, 2, 2), 1, 2, 1)
        return cls(dev, False, 64, (1, 8), (0.1, 0.25, 0.5, 1.0), ("tf32", "bf16"), 1.0, (5, 10, 5), 5, 20, 8)


def _mode(mode: str) -> torch.dtype:
    """Set both TF32 switches for `mode` and return its dtype ("tf32": fp32 with TF32 on)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    return torch.bfloat16 if mode == "bf16" else torch.float32


def _net(setup: CheckSetup, dtype: torch.dtype) -> IRNet:
    torch.manual_seed(0)
    net = IRNet(width_mult=setup.width, block_counts=setup.blocks).eval()
    return net.to(setup.device, dtype)


def folded_dense(net: IRNet) -> IRNet:
    """Dense IRNet at its best for inference: every BN folded into its conv, channels_last."""
    return fold_batchnorm(copy.deepcopy(net)).to(memory_format=torch.channels_last)


def _time(fn, setup: CheckSetup) -> float:
    return measure(lambda i: fn(), setup.device, setup.warmup, setup.runs).median


def _maybe_graphed(fn, inputs, setup: CheckSetup):
    """fn(*inputs) replayed from a CUDA graph on CUDA; fn itself elsewhere."""
    if setup.device.type != "cuda":
        return lambda: fn(*inputs)
    graphed = GraphedCall(fn, [t.clone() for t in inputs])
    return lambda: graphed(*inputs)


# --- sections -----------------------------------------------------------------------------------
def _text(stream: str | bytes | None) -> str:
    return stream.decode(errors="replace") if isinstance(stream, bytes) else (stream or "")


def gpu_tests(setup: CheckSetup, out: Path) -> pd.DataFrame:
    root = Path(__file__).resolve().parents[2]
    files = [f for f in GPU_TEST_FILES if (root / f).exists()]
    if setup.device.type != "cuda" or not files:
        why = "no CUDA device" if setup.device.type != "cuda" else "tests/ not found beside the package"
        return pd.DataFrame([{"check": "gpu tests", "passed": None, "detail": f"not run: {why}"}])
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               *files], cwd=root, capture_output=True, text=True, timeout=GPU_TESTS_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:  # the rest of the check still runs and reports
        (out / "pytest_gpu.log").write_text(_text(exc.stdout) + _text(exc.stderr))
        return pd.DataFrame([{"check": "gpu tests", "passed": False,
                              "detail": f"timed out after {GPU_TESTS_TIMEOUT_S} s"}])
    (out / "pytest_gpu.log").write_text(proc.stdout + proc.stderr)
    last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return pd.DataFrame([{"check": "gpu tests", "passed": proc.returncode == 0, "detail": last}])


def equality(setup: CheckSetup) -> pd.DataFrame:
    dtype = _mode("tf32")
    net = _net(setup, dtype)
    gen = torch.Generator().manual_seed(1)
    b, s = setup.batches[-1], setup.map_size
    x = torch.randn(b, net.stage_channels[0], s, s, generator=gen).relu().to(setup.device)
    mask2 = _mask((b, s, s), 0.5, gen, setup.device)
    mask3 = _mask((b, s, s), 0.25, gen, setup.device, within=mask2)
    a2, a3 = ActiveSet(mask2), ActiveSet(mask3)
    cuda = setup.device.type == "cuda"
    rows = []
    with torch.inference_mode():
        e2 = run_stage_compressed(net, 2, x, a2, graphs=False)
        e3 = run_stage_compressed(net, 3, e2, a3, source=a2, graphs=False)
        for stage, eager, other in (
                (2, e2, lambda: run_stage_compressed(net, 2, x, a2, graphs=cuda, planned=cuda)),
                (3, e3, lambda: run_stage_compressed(net, 3, e2, a3, source=a2, graphs=cuda, planned=cuda))):
            got = other()
            diff = float((got.float() - eager.float()).abs().max()) if got.numel() else 0.0
            close = diff <= 1e-3 * float(eager.abs().max())
            rows.append({"stage": stage, "compared": "graphed vs eager" if cuda else "planned vs per-layer",
                         "max_abs_diff": diff, "bitwise": bool(torch.equal(got, eager)),
                         "passed": torch.equal(got, eager) if cuda else close})
    return pd.DataFrame(rows)


def launches(setup: CheckSetup) -> pd.DataFrame:
    dtype = _mode("tf32")
    net = _net(setup, dtype)
    gen = torch.Generator().manual_seed(2)
    s = setup.map_size
    x = torch.randn(1, net.stage_channels[0], s, s, generator=gen).relu().to(setup.device)
    mask2 = _mask((1, s, s), 0.5, gen, setup.device)
    a2, a3 = ActiveSet(mask2), ActiveSet(_mask((1, s, s), 0.25, gen, setup.device, within=mask2))
    rows = []
    with torch.inference_mode():
        f2 = run_stage_compressed(net, 2, x, a2, graphs=False)
        calls = {2: lambda g: run_stage_compressed(net, 2, x, a2, graphs=g),
                 3: lambda g: run_stage_compressed(net, 3, f2, a3, source=a2, graphs=g)}
        for stage, call in calls.items():
            for graphed in ((False, True) if setup.device.type == "cuda" else (False,)):
                call(graphed)  # tables and graphs built
                with OpCounter() as counter:
                    call(graphed)
                host = []
                for _ in range(max(3, setup.runs)):
                    if setup.device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    call(graphed)
                    host.append(1e3 * (time.perf_counter() - start))
                if setup.device.type == "cuda":
                    torch.cuda.synchronize()
                rows.append({"stage": stage, "path": "graphed" if graphed else "eager", "ops": counter.total,
                             "budget": {2: 60, 3: 45}[stage],
                             "syncing_ops": ",".join(sorted(counter.syncing())),
                             "host_ms": sorted(host)[len(host) // 2]})
    return pd.DataFrame(rows)


def stage_grid(setup: CheckSetup) -> pd.DataFrame:
    rows = []
    cuda = setup.device.type == "cuda"
    for mode in setup.modes:
        dtype = _mode(mode)
        net = _net(setup, dtype)
        dense = folded_dense(net)
        gen = torch.Generator().manual_seed(3)
        for batch in setup.batches:
            s = setup.map_size
            x2 = torch.randn(batch, net.stage_channels[0], s, s, generator=gen).relu().to(setup.device, dtype)
            with torch.inference_mode():
                x3 = dense.forward_stage(2, x2.contiguous(memory_format=torch.channels_last))
            for stage, x in ((2, x2), (3, x3)):
                x_cl = x.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    dense_fn = _maybe_graphed(lambda t, st=stage, d=dense: d.forward_stage(st, t), [x_cl],
                                              setup)
                t_dense = _time(dense_fn, setup)
                for f in setup.fractions:
                    if setup.past_deadline():  # the grid's cells each capture and compile: stop in time
                        print(f"[gpu-check] stage_grid: budget spent after {len(rows)} cells", flush=True)
                        return pd.DataFrame(rows).assign(complete=False)
                    active = ActiveSet(_mask((batch, s, s), f, gen, setup.device))

                    def region(a=active, st=stage, t=x_cl, n=net):  # both sides read channels_last
                        return run_stage_compressed(n, st, t, a, graphs=cuda)
                    t_region = _time(region, setup)
                    rows.append({"mode": mode, "batch": batch, "stage": stage, "fraction": f,
                                 "dense_ms": t_dense, "region_ms": t_region,
                                 "efficiency": t_dense / t_region * f})
    return pd.DataFrame(rows).assign(complete=True)


def end_to_end(setup: CheckSetup) -> pd.DataFrame:
    dtype = _mode("tf32")
    net = _net(setup, dtype)
    dense = folded_dense(net)
    gen = torch.Generator().manual_seed(4)
    s = 8 * setup.map_size
    img = torch.randn(1, 3, s, s, generator=gen).to(setup.device)
    img = img.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        feats = dense.forward_stages(img)
        per_stage = []
        for stage, inp in ((1, img), (2, feats[0]), (3, feats[1])):
            fn = _maybe_graphed(lambda t, st=stage: dense.forward_stage(st, t), [inp.contiguous(
                memory_format=torch.channels_last)], setup)
            per_stage.append(_time(fn, setup))
        whole = _time(_maybe_graphed(lambda t: dense(t), [img], setup), setup)
    rows = [{"method": "irnet_dense", "graphed": setup.device.type == "cuda", "ms": whole, "f2": 1.0,
             "f3": 1.0, "speedup": 1.0, "predicted": 1.0}]
    stage1 = _maybe_graphed(lambda t: dense.forward_stage(1, t), [img], setup)
    for method, (f2, f3) in SHARES.items():
        m2 = _mask((1, setup.map_size, setup.map_size), f2, gen, setup.device)
        a2 = ActiveSet(m2)
        a3 = ActiveSet(_mask((1, setup.map_size, setup.map_size), f3, gen, setup.device, within=m2))
        for graphed in ((False, True) if setup.device.type == "cuda" else (False,)):
            def step(g=graphed, a2=a2, a3=a3):
                feat1 = stage1()
                feat2 = run_stage_compressed(net, 2, feat1, a2, graphs=g)
                return run_stage_compressed(net, 3, feat2, a3, source=a2, graphs=g)
            ms = _time(step, setup)
            # T_dense: the whole graphed network, as in the measured speedup (a ratio of the two is then
            # (T1 + f2*T2 + f3*T3) / ms, free of the gap between one graph and three)
            predicted = whole / (per_stage[0] + f2 * per_stage[1] + f3 * per_stage[2])
            rows.append({"method": method, "graphed": graphed, "ms": ms, "f2": f2, "f3": f3,
                         "speedup": whole / ms, "predicted": predicted})
    return pd.DataFrame(rows)


def train_steps(setup: CheckSetup, iterations: int = 6) -> pd.DataFrame:
    """s/iter of a LayerCascade training step, dsn vs lc (`lc.bench.train_step`, `lc bench train`)."""
    _mode("tf32")
    bench = (TrainBench.quick(setup.device) if setup.quick
             else TrainBench(setup.device, batch=setup.train_batch, crop=8 * setup.map_size,
                             width=setup.width, blocks=setup.blocks, iterations=iterations))
    return train_step_times(bench)


def device_lost(device: torch.device) -> str | None:
    """Why `device` can run nothing more (a device-side assert or an illegal address is sticky: every
    later CUDA call fails with it), or None. The CPU is never lost."""
    if device.type != "cuda":
        return None
    try:
        torch.cuda.synchronize(device)
        torch.zeros(1, device=device).add_(1).item()
    except RuntimeError as exc:
        return str(exc).splitlines()[0][:200]
    return None


def _run_section(name: str, section, out: Path) -> pd.DataFrame:
    """The section's table, or a one-row table naming its error (the traceback in NAME.error.txt):
    one failing section (an out-of-memory, a compile error) must not cost the others their figures."""
    try:
        return section()
    except Exception as exc:  # noqa: BLE001 (reported in the summary, the check goes on)
        (out / f"{name}.error.txt").write_text(traceback.format_exc())
        return pd.DataFrame([{"error": f"{type(exc).__name__}: {exc}"[:300]}])


def run_gpu_check(out: str | Path, device: str = "cuda", quick: bool = False,
                  budget_s: float | None = BUDGET_S) -> dict[str, pd.DataFrame]:
    """Every section, its CSV, the plot and summary.txt under `out`; returns the tables.

    budget_s: sections that would start after this many seconds are skipped (n/a in the summary),
    so the check ends near its budget on any GPU; None: no limit."""
    from lc.bench.gpu_summary import summarise

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    setup = CheckSetup.make(device, quick)
    backends = torch.backends
    old = (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark)
    torch.backends.cudnn.benchmark = True  # the dense baseline at its best: cuDNN's autotuned algorithms
    tables = {}
    begin = time.perf_counter()
    setup.deadline = begin + budget_s if budget_s is not None else None
    try:
        with log_compiles() as compiles:  # the Triton variants this process built or loaded
            sections = {"tests": lambda: gpu_tests(setup, out), "equality": lambda: equality(setup),
                        "launches": lambda: launches(setup), "stage_grid": lambda: stage_grid(setup),
                        "end_to_end": lambda: end_to_end(setup), "train": lambda: train_steps(setup)}
            lost = None  # why the device can no longer run anything
            for name, section in sections.items():
                start = time.perf_counter()
                if lost is not None:
                    tables[name] = pd.DataFrame([{"skipped": lost}])
                elif budget_s is not None and start - begin > budget_s:
                    tables[name] = pd.DataFrame([{"skipped": f"the {budget_s:.0f} s budget was spent"}])
                else:
                    tables[name] = _run_section(name, section, out)
                    if "error" in tables[name].columns and (why := device_lost(setup.device)) is not None:
                        lost = f"the CUDA context was lost in {name} ({why})"
                write_csv(tables[name], out / f"{name}.csv")
                tables["triton_cache"] = pd.DataFrame([compiles.as_row()])
                write_csv(tables["triton_cache"], out / "triton_cache.csv")
                print(f"[gpu-check] {name}: {time.perf_counter() - start:.1f} s", flush=True)
                try:  # a run killed later still leaves its summary
                    summarise(tables, setup, out, echo=False)
                except Exception as exc:  # noqa: BLE001 (the final summary in `finally` tries again)
                    print(f"[gpu-check] summary after {name} failed: {type(exc).__name__}: {exc}", flush=True)
    finally:
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark = old
        summarise(tables, setup, out)
    return tables
