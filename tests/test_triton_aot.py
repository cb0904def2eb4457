"""The Triton kernels compiled for a GPU that is not here (`lc.ops.triton.aot`, `lc bench gpu-compile`).

Triton's own compiler and bundled ptxas build each variant the ops launch for sm_90 / sm_80; nothing
runs. Skipped where the NVIDIA backend is missing (triton not installed, another platform) or the
process runs Triton's interpreter.
"""

from __future__ import annotations

import os
import sys

import pandas as pd
import pytest
import torch

import lc.ops.library as library
from lc.ops.triton.aot import AOT_TARGETS, AotTarget, AotUnavailable, _triton_runtime, compile_only

try:  # skips, naming why, where this machine's Triton cannot compile for a GPU
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise AotUnavailable("this process runs Triton's interpreter")
    _triton_runtime()
except AotUnavailable as exc:
    pytest.skip(str(exc), allow_module_level=True)

from lc.ops.triton import kernels, region_gemm  # noqa: E402


@pytest.fixture(autouse=True)
def _own_triton_cache(tmp_path, monkeypatch):
    """Compiles go to a fresh cache: every variant is really compiled, nothing lands in ~/.triton."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))


def _conv_case(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(200, 48, generator=gen).to(dtype)
    table = torch.randint(0, 201, (150, 9), generator=gen, dtype=torch.int32)  # 200: the zero row
    weight = torch.randn(9, 48, 40, generator=gen).to(dtype)
    bias = torch.randn(40, generator=gen).to(dtype)
    return src, table, weight, bias


@pytest.mark.parametrize("target", sorted(AOT_TARGETS))
def test_variants_compile_for_the_target_and_nothing_runs(target):
    src, table, weight, bias = _conv_case()
    out = torch.full((150, 56), 7.0)
    with compile_only(target) as variants:
        for _ in range(2):
            torch.ops.lc.gather_conv_into(src, table, weight, bias, True, 0, out, 8, None)
        torch.ops.lc.gather_linear(src.bfloat16(), weight[0].bfloat16(), None, None, 1.0, False, 0, None)
    assert torch.equal(out, torch.full((150, 56), 7.0))  # compiled, never launched: out untouched
    assert [v.kernel for v in variants] == ["gather_gemm_kernel", "gather_gemm_kernel"]
    conv, linear = variants
    assert conv.launches == 2 and linear.launches == 1  # the second call reused the compiled variant
    assert conv.constants["TAPS"] == 9 and conv.constants["RELU"] is True
    assert conv.signature["src_ptr"] == "*fp32" and linear.signature["src_ptr"] == "*bf16"
    limit = AOT_TARGETS[target].max_shared_mem
    for v in variants:
        assert v.registers > 0 and v.spill_bytes >= 0 and 0 < v.shared_bytes <= limit and not v.error


def test_everything_is_restored_and_the_cpu_path_computes_again():
    from triton.runtime.driver import driver
    before = (driver._active, library._cpu_backend, kernels.gather_gemm_kernel.device_caches,
              dict(region_gemm._sm_count))
    src, table, weight, bias = _conv_case()
    with compile_only("a100"):
        assert library.uses_triton(torch.device("cpu"))
        torch.ops.lc.gather_conv(src, table, weight, bias, None, 1.0, False, 0, None, None)
    after = (driver._active, library._cpu_backend, kernels.gather_gemm_kernel.device_caches,
             dict(region_gemm._sm_count))
    assert after[0] is before[0] and after[2] is before[2]  # the very same driver and caches
    assert (after[1], after[3]) == (before[1], before[3])
    got = torch.ops.lc.gather_conv(src, table, weight, bias, None, 1.0, False, 0, None, None)
    padded = torch.cat((src, src.new_zeros(1, 48)))
    want = torch.einsum("ntc,tco->no", padded[table.long()], weight) + bias
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_second_compile_loads_every_variant_from_the_cache_the_first_filled(monkeypatch):
    """What lets `lc bench gpu-compile` pre-fill the cache a GPU run reads: the same launches under a
    fresh runtime state find each variant under the key the first compile stored it at; the
    compile listener already installed still hears every event and is put back."""
    from triton import knobs
    heard = []

    def installed(**event):
        heard.append(event["cache_hit"])
    monkeypatch.setattr(knobs.compilation, "listener", installed)
    src, table, weight, bias = _conv_case()
    runs = []
    for _ in range(2):
        with compile_only("h100") as variants:  # fresh per-device caches: only the disk cache is shared
            torch.ops.lc.gather_conv(src, table, weight, bias, None, 1.0, True, 0, None, None)
            torch.ops.lc.gather_linear(src.bfloat16(), weight[0].bfloat16(), None, None, 1.0, False, 0, None)
        runs.append([(v.kernel, v.constants, v.signature, v.cache_hit) for v in variants])
    first, second = runs
    assert [hit for *_, hit in first] == [False, False] and [hit for *_, hit in second] == [True, True]
    assert [v[:3] for v in first] == [v[:3] for v in second]
    assert heard == [False, False, True, True]
    assert knobs.compilation.listener is installed


def test_h100_pcie_is_its_own_target():
    assert AOT_TARGETS["h100-pcie"].arch == AOT_TARGETS["h100"].arch == 90
    assert AOT_TARGETS["h100-pcie"].sm_count == 114 != AOT_TARGETS["h100"].sm_count


def test_a_variant_over_the_shared_memory_limit_is_an_error():
    tiny = AotTarget("tiny", 90, 132, max_shared_mem=1024)
    src, table, weight, bias = _conv_case()
    with compile_only(tiny) as variants, pytest.raises(Exception, match="shared memory|out of resource"):
        torch.ops.lc.gather_conv(src, table, weight, bias, None, 1.0, False, 0, None, None)
    assert variants and "shared memory" in variants[0].error and variants[0].shared_bytes > 1024


def test_compile_only_refuses_an_unknown_target_and_the_interpreter(monkeypatch):
    with pytest.raises(ValueError, match="unknown AOT target"), compile_only("v100"):
        pass
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(AotUnavailable, match="unset TRITON_INTERPRET"), compile_only("h100"):
        pass
    assert library._cpu_backend == "torch"


def test_the_command_line_says_so_in_one_line_where_triton_cannot(tmp_path, monkeypatch, capsys):
    from lc.cli.main import main
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert main(["bench", "gpu-compile", "--quick", "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lc ")]
    assert len(errors) == 1 and errors[0].startswith("lc bench gpu-compile: error:")
    assert "TRITON_INTERPRET" in errors[0] and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gpu_compile_cli_quick(tmp_path):
    """`lc bench gpu-compile --quick`: every scenario of the tiny network compiles for sm_90."""
    from lc.cli.main import main
    out = tmp_path / "compile"
    assert main(["bench", "gpu-compile", "--quick", "--out", str(out)]) == 0
    scenarios = pd.read_csv(out / "scenarios.csv")
    variants = pd.read_csv(out / "variants.csv")
    assert scenarios["ok"].all() and (scenarios["new_variants"] > 0).all()
    assert set(scenarios["scenario"]) >= {"inference/fp32", "inference/bf16", "training/bf16",
                                          "backbones/bf16"}
    assert {"gather_gemm_kernel", "gather_weight_grad_kernel", "_depthwise_kernel"} <= set(variants["kernel"])
    assert variants["ok"].all() and (variants["registers"] > 0).all() and (variants["launches"] > 0).all()
    assert (variants["shared_bytes"] <= variants["shared_limit"]).all()
    assert not variants["cache_hit"].any()  # a fresh cache (the fixture's): every variant built here
    summary = (out / "summary.txt").read_text()
    assert "PASS" in summary and "sm_90" in summary
    assert "compiled into it, 0 already there" in summary and "triton-cache" in summary
    assert library._cpu_backend == "torch" and sys.modules["lc.ops.library"] is library


# what a registered conv op may dispatch around its Triton launch: views and its output's allocation
_VIEW_OPS = {"aten::reshape", "aten::view", "aten::narrow", "aten::slice", "aten::as_strided", "aten::select",
             "aten::t", "aten::transpose", "aten::permute", "aten::expand", "aten::_reshape_alias"}
_ALLOC_OPS = {"aten::new_empty", "aten::empty", "aten::empty_strided"}


def _aten_ops(fn) -> dict[str, int]:
    from collections import Counter

    from torch.profiler import profile
    with profile() as prof:
        fn()
    return dict(Counter(e.name for e in prof.events() if e.name.startswith("aten::")))


def test_the_gpu_path_of_each_conv_op_is_one_launch_and_no_copy():
    """Deliverable 3 on the Triton path (what runs on CUDA): no per-call contiguous, cast or copy."""
    src, table, weight, bias = _conv_case(torch.bfloat16)
    wide = torch.zeros(200, 56, dtype=torch.bfloat16)  # a column window of it: src_col 8
    out = torch.zeros(150, 56, dtype=torch.bfloat16)
    calls = {
        "gather_conv": lambda: torch.ops.lc.gather_conv(src, table, weight, bias, None, 1.0, True, 0, None,
                                                        [32, 64, 32]),
        "gather_conv_into": lambda: torch.ops.lc.gather_conv_into(wide, table, weight, bias, True, 8, out, 8,
                                                                  [32, 64, 32]),
        "gather_linear": lambda: torch.ops.lc.gather_linear(wide, weight[0], bias, src[:, :40], 0.5, True, 8,
                                                            [32, 64, 32]),
    }
    with compile_only("h100") as variants, torch.inference_mode():
        for name, call in calls.items():
            call()  # compiled here
            launched = sum(v.launches for v in variants)
            ops = _aten_ops(call)
            assert sum(v.launches for v in variants) == launched + 1, name
            assert set(ops) <= _VIEW_OPS | _ALLOC_OPS, (name, ops)
            assert sum(ops.get(op, 0) for op in _ALLOC_OPS - {"aten::new_empty"}) <= 1, (name, ops)


def test_a_planned_stage_launches_one_kernel_per_conv_op():
    from lc.bench.launches import OpCounter
    from lc.models.irnet import IRNet
    from lc.models.region_irnet import planned_tables
    from lc.models.region_plan import run_planned, stage_rows
    from lc.ops.active_set import ActiveSet

    torch.manual_seed(0)
    net = IRNet(width_mult=0.0625, block_counts=(1, 2, 2)).eval()
    mask = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.4
    active, full = ActiveSet(mask), ActiveSet(torch.ones(1, 8, 8, dtype=torch.bool))
    rows = active.num_active
    dense = torch.zeros(1, net.stage_channels[0], 8, 8).contiguous(memory_format=torch.channels_last)
    inputs = {2: (dense, None), 3: (torch.zeros(64, net.stage_channels[1]), full)}
    with compile_only("h100") as variants, torch.inference_mode():
        for stage, (x, source) in inputs.items():
            def run(stage=stage, x=x, source=source):
                plan, tables = planned_tables(net, stage, active, torch.float32, source, rows)
                return run_planned(plan, stage_rows(x, source, torch.float32), tables)
            run()
            launched = sum(v.launches for v in variants)
            with OpCounter() as counter:
                run()
            convs = sum(n for op, n in counter.ops.items()
                        if op.split(".")[1] in ("gather_conv", "gather_conv_into", "gather_linear"))
            assert convs >= 10 and sum(v.launches for v in variants) - launched == convs
            assert not counter.syncing()
