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
              region_gemm._compile_only[0], dict(region_gemm._sm_count))
    src, table, weight, bias = _conv_case()
    with compile_only("a100"):
        assert library.uses_triton(torch.device("cpu"))
        torch.ops.lc.gather_conv(src, table, weight, bias, None, 1.0, False, 0, None, None)
    after = (driver._active, library._cpu_backend, kernels.gather_gemm_kernel.device_caches,
             region_gemm._compile_only[0], dict(region_gemm._sm_count))
    assert after[0] is before[0] and after[2] is before[2]  # the very same driver and caches
    assert (after[1], after[3], after[4]) == (before[1], before[3], before[4])
    got = torch.ops.lc.gather_conv(src, table, weight, bias, None, 1.0, False, 0, None, None)
    padded = torch.cat((src, src.new_zeros(1, 48)))
    want = torch.einsum("ntc,tco->no", padded[table.long()], weight) + bias
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


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
                                          "per_layer/bf16"}
    assert {"gather_gemm_kernel", "gather_weight_grad_kernel", "_depthwise_kernel"} <= set(variants["kernel"])
    assert variants["ok"].all() and (variants["registers"] > 0).all() and (variants["launches"] > 0).all()
    assert (variants["shared_bytes"] <= variants["shared_limit"]).all()
    summary = (out / "summary.txt").read_text()
    assert "PASS" in summary and "sm_90" in summary
    assert library._cpu_backend == "torch" and sys.modules["lc.ops.library"] is library
