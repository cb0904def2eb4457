"""What the CPU proves about the planned region stage: no host sync, a launch budget, one graph.

- A TorchDispatchMode over a planned stage's forward (tables built) sees no syncing op.
- Launches, counted as aten ops plus registered-op calls: <= 60 for stage 2 and <= 45 for stage 3
  of the paper's network (5/10/5 blocks, full width, a tiny map).
- torch.compile(fullgraph=True): 0 graph breaks, at most one compile per row bucket over 20
  active counts (a counting backend: the graph dynamo captures, run as traced).
"""

from __future__ import annotations

import pytest
import torch

from lc.bench.launches import SYNCING_OPS, OpCounter
from lc.models.irnet import IRNet
from lc.models.region_irnet import planned_tables, run_stage_compressed, stage_rows
from lc.models.region_plan import run_planned
from lc.ops.active_set import ActiveSet
from lc.ops.region_tables import bucket_for

SYNCING = SYNCING_OPS
BUDGET = {2: 60, 3: 45}


@pytest.fixture(scope="module")
def paper_net() -> IRNet:
    torch.manual_seed(0)
    return IRNet(block_counts=(5, 10, 5)).eval()  # the paper's depth, full width


def _stage_calls(net: IRNet):
    """Both planned stages on a 1x6x5 map, tables built; returns per-stage op counters."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, net.stage_channels[0], 6, 5, generator=gen).relu()
    mask2 = torch.rand(1, 6, 5, generator=gen) < 0.6
    active2 = ActiveSet(mask2)
    active3 = ActiveSet(mask2 & (torch.rand(1, 6, 5, generator=gen) < 0.6))
    counters = {}
    with torch.no_grad():
        feat2 = run_stage_compressed(net, 2, x, active2)  # builds plan and tables
        run_stage_compressed(net, 3, feat2, active3, source=active2)
        for stage, args in ((2, (net, 2, x, active2)), (3, (net, 3, feat2, active3, active2))):
            with OpCounter() as counter:
                run_stage_compressed(*args)
            counters[stage] = counter.ops
    return counters


def test_planned_stages_never_sync_and_fit_the_launch_budget(paper_net: IRNet) -> None:
    counters = _stage_calls(paper_net)
    for stage, ops in counters.items():
        assert not SYNCING & set(ops), (stage, ops)
        assert sum(ops.values()) <= BUDGET[stage], (stage, sum(ops.values()), ops)
        assert ops["lc.gather_conv.default"] > 0  # the counter sees the registered ops


def test_the_counter_sees_a_sync() -> None:
    with OpCounter() as counter:
        torch.tensor([1.0, 0.0]).nonzero()
        float(torch.tensor(2.0).sum())
    assert SYNCING & set(counter.ops)


def _small_net() -> IRNet:
    torch.manual_seed(0)
    return IRNet(width_mult=0.0625, block_counts=(1, 2, 2)).eval()


@pytest.mark.slow
def test_planned_stage_compiles_in_one_graph() -> None:
    net = _small_net()
    x = torch.randn(1, net.stage_channels[0], 8, 8).relu()
    try:
        with torch.no_grad():
            plan, tables = planned_tables(net, 2, ActiveSet(torch.rand(1, 8, 8) < 0.5), torch.float32)
            explained = torch._dynamo.explain(run_planned)(plan, stage_rows(x, None, torch.float32), tables)
    finally:
        torch._dynamo.reset()
    assert explained.graph_break_count == 0 and explained.graph_count == 1


@pytest.mark.slow
def test_one_compile_per_bucket_at_most() -> None:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    net = _small_net()
    x = torch.randn(1, net.stage_channels[0], 8, 8).relu()
    rows = stage_rows(x, None, torch.float32)
    counter = CompileCounter()
    compiled = torch.compile(run_planned, backend=counter, fullgraph=True)
    gen = torch.Generator().manual_seed(0)
    buckets = set()
    try:
        with torch.no_grad():
            for count in range(3, 63, 3):  # 20 active counts
                mask = torch.zeros(64, dtype=torch.bool)
                mask[torch.randperm(64, generator=gen)[:count]] = True
                active = ActiveSet(mask.view(1, 8, 8))
                plan, tables = planned_tables(net, 2, active, torch.float32,
                                              num_rows=bucket_for(active.num_active, active.num_pixels))
                buckets.add(tables.num_rows)
                assert torch.equal(compiled(plan, rows, tables), run_planned(plan, rows, tables))
    finally:
        torch._dynamo.reset()
    assert counter.frame_count <= len(buckets)
    assert len(buckets) > 1
