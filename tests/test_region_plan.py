"""The planned region stage: device tables, row buckets, padded rows, plan keys and rebuilds.

The Triton half of the padded-row proof runs in Triton's interpreter (TRITON_INTERPRET=1 before
triton is imported): this file runs itself as a subprocess with that variable set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import EagerCall, randomise_bn

from lc.models.irnet import IRNet
from lc.models.plan_cache import invalidate_plans
from lc.models.region_irnet import planned_tables, run_stage_compressed, stage_rows
from lc.models.region_plan import run_planned, stage_plan
from lc.ops.active_set import ActiveSet
from lc.ops.region_tables import MAX_BUCKETS, RegionTables, bucket_for, bucket_sizes, mean_padding


def _net(width=0.125, blocks=(1, 2, 2)) -> IRNet:
    torch.manual_seed(0)
    net = IRNet(width_mult=width, block_counts=blocks).eval()
    randomise_bn(net)
    return net


def _inputs(net: IRNet, size=(9, 8), batch=2, fraction=0.5, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, net.stage_channels[0], *size, generator=gen).relu()
    mask = torch.rand(batch, *size, generator=gen) < fraction
    return x, ActiveSet(mask)


# --- buckets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_pixels", [72, 4096, 8 * 4096])
def test_buckets_are_few_geometric_and_pad_little(num_pixels: int) -> None:
    sizes = bucket_sizes(num_pixels)
    assert len(sizes) <= MAX_BUCKETS and sizes[-1] == num_pixels
    assert all(b2 <= 1.25 * b1 + 1 for b1, b2 in zip(sizes, sizes[1:], strict=False))
    assert mean_padding(num_pixels) <= 0.15
    for n in (1, num_pixels // 3, num_pixels - 1, num_pixels):
        b = bucket_for(n, num_pixels)
        assert b >= n and b in sizes


# --- tables -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,dilation", [((3, 3), (1, 1)), ((1, 7), (2, 2)), ((3, 1), (2, 2))])
def test_device_tables_equal_the_active_set_tables(kernel, dilation) -> None:
    mask = torch.rand(2, 7, 9, generator=torch.Generator().manual_seed(0)) < 0.4
    active = ActiveSet(mask)
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
    n = active.num_active
    for num_rows in (n, n + 5):
        region = RegionTables(mask, num_rows)
        assert torch.equal(region.pixel_of[:n], active.flat_index)
        own = region.table(kernel, dilation, "active")
        assert own.dtype == torch.int32 and own.shape == (num_rows, kernel[0] * kernel[1])
        want = active.neighbour_table(kernel, dilation, padding, source="active")
        want = torch.where(want == n, torch.full_like(want, num_rows), want)  # the sentinel is R
        assert torch.equal(own[:n].long(), want)
        assert bool((own[n:] == num_rows).all())  # padded rows read zero through every tap
        dense = region.table(kernel, dilation, "dense")
        want_dense = active.neighbour_table(kernel, dilation, padding, source="dense")
        assert torch.equal(dense[:n].long(), want_dense)
        assert bool((dense[n:] == mask.numel()).all())


def test_source_tables_follow_a_new_source_object() -> None:
    """A table read from a source set is cached per source object: a new source (which CPython
    often places at the freed one's address) gets its own table, never the old one's rows."""
    gen = torch.Generator().manual_seed(5)
    active_mask = torch.rand(1, 6, 7, generator=gen) < 0.4
    region = RegionTables(active_mask, int(active_mask.sum()))
    tables = []
    for fraction in (0.6, 0.9):
        source_mask = (torch.rand(1, 6, 7, generator=gen) < fraction) | active_mask
        source = RegionTables(source_mask, int(source_mask.sum()))
        got = region.table((3, 3), (1, 1), source=source)
        want = ActiveSet(active_mask).neighbour_table((3, 3), (1, 1), (1, 1), source=ActiveSet(source_mask))
        assert torch.equal(got.long(), want)
        tables.append(got)
        del source
    assert not torch.equal(tables[0], tables[1])


def test_scatter_drops_padded_rows() -> None:
    mask = torch.rand(1, 5, 6, generator=torch.Generator().manual_seed(3)) < 0.5
    n = int(mask.sum())
    region = RegionTables(mask, n + 4)
    feat = torch.randn(n + 4, 3)
    feat[n:] = float("nan")
    dense = region.scatter(feat)
    assert torch.equal(dense, ActiveSet(mask).scatter(feat[:n]))


# --- padded rows --------------------------------------------------------------------------------
def _padded_results(net: IRNet, stage: int = 2) -> dict:
    """Real rows of the planned stage at several bucket sizes, padded rows poisoned with NaN."""
    x, active = _inputs(net)
    n = active.num_active
    results = {}
    with torch.no_grad():
        for rows in (n, n + 3, bucket_for(n, active.num_pixels), active.num_pixels):
            plan, tables = planned_tables(net, stage, active, torch.float32, num_rows=rows)
            out = run_planned(plan, stage_rows(x, None, torch.float32), tables, poison=True)
            results[rows] = out
    return {"n": n, "results": results}


def _check_padded(found: dict) -> None:
    n, results = found["n"], found["results"]
    unpadded = results[n]
    assert len(results) >= 3
    for rows, out in results.items():
        assert out.shape[0] == rows
        assert bool(torch.isfinite(out[:n]).all())
        assert torch.equal(out[:n], unpadded), rows  # bitwise
        if rows > n:
            assert bool(torch.isnan(out[n:]).all())  # the poison really was there


def test_padded_rows_are_inert_torch() -> None:
    # one thread: a threaded BLAS may split a GEMM by its row count, and a row's bits with it (the
    # bitwise claim is about the padding, not about the BLAS's thread partition)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_padded(_padded_results(_net()))
    finally:
        torch.set_num_threads(threads)


class _TileSpy:
    """Wraps the gather-GEMM kernel: records each launch's (BLOCK_N, BLOCK_CO, BLOCK_CI)."""

    def __init__(self, kernel):
        self.kernel, self.seen = kernel, []

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.seen.append((kwargs["BLOCK_N"], kwargs["BLOCK_CO"], kwargs["BLOCK_CI"]))
            return launch(*args, **kwargs)
        return run


def _check_plan_tiles() -> float:
    """On Triton the plan fixes every GEMM's tiles per bucket and the launches run with them."""
    from lc.ops.triton import region_gemm

    net = _net(width=0.0625, blocks=(1, 1, 1))
    x, active = _inputs(net)
    spy = region_gemm.gather_gemm_kernel = _TileSpy(region_gemm.gather_gemm_kernel)
    try:
        with torch.no_grad():
            plan, tables = planned_tables(net, 2, active, torch.float32)
            fixed = plan.tiles[tables.num_rows]
            assert fixed and tables.tiles is fixed
            for (cin, cout), tiles in fixed.items():
                assert tiles == region_gemm.choose_tiles(tables.num_rows, cin, cout, 4, plan.device)
            shapes = set(fixed)
            rows = stage_rows(x, None, torch.float32)
            first = run_planned(plan, rows, tables)
            assert spy.seen and set(spy.seen) <= {tuple(t) for t in fixed.values()}
            assert set(fixed) == shapes  # recorded when built, nothing chosen at run time
            for tiles in fixed.values():
                tiles[0] = 16  # another BLOCK_N in the plan: the launches follow it
            spy.seen.clear()
            forced = run_planned(plan, rows, tables)
            assert spy.seen and all(block_n == 16 for block_n, _, _ in spy.seen)
    finally:
        region_gemm.gather_gemm_kernel = spy.kernel
    return float((forced - first).abs().max())


def _interpreter_main() -> None:
    from lc.ops.library import set_library_backend

    set_library_backend("triton")
    found = _padded_results(_net(width=0.0625, blocks=(1, 1, 1)))
    _check_padded(found)
    tiles_err = _check_plan_tiles()
    set_library_backend("torch")
    reference = _padded_results(_net(width=0.0625, blocks=(1, 1, 1)))["results"]
    err = max(float((found["results"][k] - reference[k])[: found["n"]].abs().max()) for k in reference)
    print(json.dumps({"ok": True, "max_err_vs_torch": err, "forced_tiles_err": tiles_err}))


@pytest.mark.slow
def test_padded_rows_are_inert_triton_interpreter() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    tests_dir = os.path.dirname(__file__)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests_dir, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["ok"] and found["max_err_vs_torch"] < 1e-4
    assert found["forced_tiles_err"] < 1e-4  # other tiles, the same stage


def test_plan_fixes_no_tiles_off_triton() -> None:
    net = _net()
    x, active = _inputs(net)
    with torch.no_grad():
        plan, tables = planned_tables(net, 2, active, torch.float32)
    assert plan.tiles is None and tables.tiles is None  # the torch kernels take no tiles


# --- plan keys and rebuilds -----------------------------------------------------------------------
def test_plan_is_reused_and_rebuilt_on_weight_change() -> None:
    net = _net()
    plan = stage_plan(net, 2, torch.float32)
    assert stage_plan(net, 2, torch.float32) is plan  # built once
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.mixed_6a.branch0.conv.weight.grad = torch.ones_like(net.mixed_6a.branch0.conv.weight)
    opt.step()
    after_step = stage_plan(net, 2, torch.float32)
    assert after_step is not plan
    net.load_state_dict(net.state_dict())
    after_load = stage_plan(net, 2, torch.float32)
    assert after_load is not after_step
    invalidate_plans()
    assert stage_plan(net, 2, torch.float32) is not after_load
    net.double()
    assert stage_plan(net, 2, torch.float64).key[2] == torch.float64


def test_plan_follows_replaced_and_converted_parameters() -> None:
    """A parameter set anew, and `.to()` round trips that keep dtype and device (whose storage is
    swapped), rebuild the plan: the planned stage follows the dense one."""
    net = _net()
    x, active = _inputs(net)
    conv = net.mixed_6a.branch0.conv

    def check() -> torch.Tensor:
        with torch.no_grad():
            planned = run_stage_compressed(net, 2, x, active)
            torch.testing.assert_close(planned, run_stage_compressed(net, 2, x, active, planned=False),
                                       atol=1e-4, rtol=1e-4)
        return planned

    before = check()
    plan = stage_plan(net, 2, torch.float32)
    conv.weight = torch.nn.Parameter(conv.weight.detach() * 2.0)
    assert stage_plan(net, 2, torch.float32) is not plan
    doubled = check()
    assert (doubled - before).abs().max() > 1e-2
    plan = stage_plan(net, 2, torch.float32)
    net.half().float()  # same dtype and device as before, new storage, rounded values
    assert stage_plan(net, 2, torch.float32) is not plan
    rounded = check()
    assert (rounded - doubled).abs().max() > 1e-4  # what a stale plan would have missed


def test_plan_key_holds_dtype_and_both_tf32_flags() -> None:
    net = _net()
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        keys = set()
        for matmul in (False, True):
            for cudnn in (False, True):
                torch.backends.cuda.matmul.allow_tf32 = matmul
                torch.backends.cudnn.allow_tf32 = cudnn
                keys.add(stage_plan(net, 3, torch.float32).key)
        assert len(keys) == 4
        assert stage_plan(net, 3, torch.float64).key[2] == torch.float64
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_config_switch_selects_the_per_layer_path() -> None:
    from lc.bench.launches import OpCounter
    from lc.models.region_irnet import configure_region

    net = _net()
    x, active = _inputs(net)
    counts = {}
    try:
        with torch.no_grad():
            for planned in (True, False):
                configure_region(planned=planned)
                run_stage_compressed(net, 2, x, active)
                with OpCounter() as counter:
                    counts[planned] = run_stage_compressed(net, 2, x, active)
                assert bool(counter.ops["lc.gather_conv.default"]) == planned
    finally:
        configure_region(planned=True)
    torch.testing.assert_close(counts[True], counts[False], rtol=1e-4, atol=1e-4)


def test_planned_path_follows_the_new_weights_after_a_step() -> None:
    net = _net()
    x, active = _inputs(net)
    with torch.no_grad():
        before = run_stage_compressed(net, 2, x, active)
        net.repeat_1[0].conv2d.weight.add_(0.5)
        invalidate_plans()
        after = run_stage_compressed(net, 2, x, active)
        legacy = run_stage_compressed(net, 2, x, active, planned=False)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, legacy, rtol=1e-4, atol=1e-4)


# --- the CUDA-graph cache, its bookkeeping proven on the CPU (capture stood in by an eager call) ---
def test_graphs_are_kept_per_plan_and_dropped_with_it(monkeypatch) -> None:
    import lc.models.region_graphs as graphs
    from lc.models.region_irnet import _run_graphed

    monkeypatch.setattr(graphs, "GraphedCall", EagerCall)
    EagerCall.captures = 0
    net = _net()
    x, active = _inputs(net)
    with torch.no_grad():
        feat2 = _run_graphed(net, 2, x, active, None, torch.float32, None, True)
        keep = torch.rand(active.mask.shape, generator=torch.Generator().manual_seed(4)) < 0.6
        active3 = ActiveSet(active.mask & keep)
        for _ in range(3):  # stage 2 then 3, as a forward does: each captured once, not per call
            feat2 = _run_graphed(net, 2, x, active, None, torch.float32, None, True)
            feat3 = _run_graphed(net, 3, feat2, active3, active, torch.float32, None, True)
        assert EagerCall.captures == 2
        torch.testing.assert_close(feat2, run_stage_compressed(net, 2, x, active, graphs=False))
        torch.testing.assert_close(feat3, run_stage_compressed(net, 3, feat2, active3, active, graphs=False))
        plan2 = stage_plan(net, 2, torch.float32)
        assert len(plan2.graphs) == 1
        with torch.inference_mode():  # statics made under inference mode are a graph of their own
            _run_graphed(net, 2, x, active, None, torch.float32, None, True)
        assert len(plan2.graphs) == 2 and EagerCall.captures == 3
        invalidate_plans()  # new weights: the old plan's graphs go with it, the new plan starts empty
        plan2_new = stage_plan(net, 2, torch.float32)
        assert plan2_new is not plan2 and not plan2.graphs and not plan2_new.graphs
        _run_graphed(net, 2, x, active, None, torch.float32, None, True)
        assert EagerCall.captures == 4
    graphs.clear_graphs()
    assert not plan2_new.graphs


if __name__ == "__main__":
    _interpreter_main()
