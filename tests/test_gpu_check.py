"""`lc bench gpu-check --device cpu --quick`: the GPU check's code runs end to end on tiny shapes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


@pytest.mark.slow
def test_gpu_check_quick_on_cpu_writes_every_output(tmp_path) -> None:
    from lc.cli.main import main

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    try:
        assert main(["bench", "gpu-check", "--config", str(CONFIG), "--device", "cpu", "--quick", "--out",
                     str(tmp_path), "--budget-s", "0"]) == 0  # 0: no budget, every section on any machine
    finally:
        torch.set_num_threads(old[2])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == old[:2]  # restored
    for name in ("tests", "equality", "launches", "stage_grid", "end_to_end", "train"):
        assert not pd.read_csv(tmp_path / f"{name}.csv").empty, name
    assert (tmp_path / "stage_efficiency.png").stat().st_size > 0
    summary = (tmp_path / "summary.txt").read_text()
    assert "not GPU measurements" in summary
    assert "PASS  planned vs per-layer equal" in summary  # the planned path agrees with the per-layer one
    assert "PASS  launch budget" in summary and "PASS  no syncing op" in summary
    # the CPU's torch path compiles no Triton kernel; on a GPU this line says what the cache saved
    assert "n/a   Triton kernels (this process): 0 compiled" in summary
    assert pd.read_csv(tmp_path / "triton_cache.csv")[["compiled", "cache_hits"]].values.tolist() == [[0, 0]]
    grid = pd.read_csv(tmp_path / "stage_grid.csv")
    assert set(grid["stage"]) == {2, 3} and (grid["region_ms"] > 0).all()


@pytest.mark.slow
def test_bench_train_quick_on_cpu_writes_both_variants(tmp_path) -> None:
    from lc.cli.main import main

    out = tmp_path / "train.csv"
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "train", "--config", str(CONFIG), "--device", "cpu", "--quick",
                     "--iterations", "3", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    table = pd.read_csv(out)
    assert list(table["variant"]) == ["dsn", "lc"]
    assert (table[["batch", "crop", "iterations"]].values == [1, 64, 2]).all()
    assert not table["amp"].any()  # AMP is CUDA only
    assert (table["s_per_iter"] > 0).all() and (table["first_iter_s"] > 0).all()
    assert (table["compile_s"] >= 0).all()


def test_bench_train_refuses_a_crop_off_the_stride(tmp_path, capsys) -> None:
    from lc.cli.main import main

    assert main(["bench", "train", "--config", str(CONFIG), "--device", "cpu", "--quick", "--crop", "60",
                 "--out", str(tmp_path / "t.csv")]) == 2
    assert "multiple of 8" in capsys.readouterr().err


def test_gpu_tests_past_their_time_report_a_failure_and_the_check_goes_on(tmp_path, monkeypatch) -> None:
    import subprocess
    from types import SimpleNamespace

    import lc.bench.gpu_check as gpu_check

    def too_slow(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"], output=b"collected 9 items", stderr=None)

    monkeypatch.setattr(gpu_check.subprocess, "run", too_slow)
    row = gpu_check.gpu_tests(SimpleNamespace(device=torch.device("cuda")), tmp_path).iloc[0]
    assert row["passed"] is not None and not row["passed"]  # a failure, not "not run"
    assert f"timed out after {gpu_check.GPU_TESTS_TIMEOUT_S} s" in row["detail"]
    assert "collected 9 items" in (tmp_path / "pytest_gpu.log").read_text()


def test_a_failing_or_late_section_costs_only_its_own_figures(tmp_path, monkeypatch) -> None:
    """An error in one section is written beside the others and summarised as n/a; sections past the
    time budget are skipped; the summary is written either way."""
    import lc.bench.gpu_check as gpu_check

    def broken(setup):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(gpu_check, "stage_grid", broken)
    tables = gpu_check.run_gpu_check(tmp_path, device="cpu", quick=True, budget_s=None)  # any speed
    assert "CUDA out of memory" in tables["stage_grid"]["error"].iloc[0]
    assert "RuntimeError" in (tmp_path / "stage_grid.error.txt").read_text()
    assert not tables["end_to_end"].empty and "error" not in tables["end_to_end"]  # later sections ran
    summary = (tmp_path / "summary.txt").read_text()
    assert "n/a   stage_grid: error: RuntimeError: CUDA out of memory" in summary
    assert "LC >= 1.43x dense IRNet" in summary  # the end-to-end lines are still there

    late = gpu_check.run_gpu_check(tmp_path / "late", device="cpu", quick=True, budget_s=0.0)
    assert "skipped" in late["train"].columns
    assert "n/a   train: skipped" in (tmp_path / "late" / "summary.txt").read_text()


def test_the_summary_is_written_after_every_section_and_the_grid_stops_at_the_deadline(tmp_path,
                                                                                      monkeypatch) -> None:
    """A check killed mid-way (the device's time limit) leaves the summary of what it finished; the
    stage grid, the longest section, checks the deadline between its cells."""
    import lc.bench.gpu_check as gpu_check

    seen = []
    real_grid = gpu_check.stage_grid

    def grid_at_its_deadline(setup):
        seen.append((tmp_path / "summary.txt").read_text())  # written after the sections before it
        setup.deadline = 0.0  # spent: no cell starts
        return real_grid(setup)

    monkeypatch.setattr(gpu_check, "stage_grid", grid_at_its_deadline)
    tables = gpu_check.run_gpu_check(tmp_path, device="cpu", quick=True, budget_s=None)
    assert seen and "launch budget" in seen[0] and "stage efficiency" not in seen[0]
    grid = tables["stage_grid"]
    assert grid.empty or not grid["complete"].any()
    summary = (tmp_path / "summary.txt").read_text()
    assert "no cell measured (cut short by the budget" in summary


def test_after_a_section_loses_the_cuda_context_the_rest_are_skipped_naming_it(tmp_path,
                                                                               monkeypatch) -> None:
    """A sticky CUDA error (device-side assert) makes every later CUDA call fail: the remaining
    sections say why instead of reporting errors of their own."""
    import lc.bench.gpu_check as gpu_check

    def broken(setup):
        raise RuntimeError("CUDA error: device-side assert triggered (simulated)")

    monkeypatch.setattr(gpu_check, "launches", broken)
    monkeypatch.setattr(gpu_check, "device_lost", lambda device: "device-side assert triggered")
    tables = gpu_check.run_gpu_check(tmp_path, device="cpu", quick=True, budget_s=None)
    assert "error" in tables["launches"].columns and not tables["equality"].empty
    for name in ("stage_grid", "end_to_end", "train"):
        assert "the CUDA context was lost in launches" in tables[name]["skipped"].iloc[0]
    summary = (tmp_path / "summary.txt").read_text()
    assert "n/a   train: skipped: the CUDA context was lost in launches" in summary


def test_the_cpu_is_never_lost() -> None:
    from lc.bench.gpu_check import device_lost
    assert device_lost(torch.device("cpu")) is None
