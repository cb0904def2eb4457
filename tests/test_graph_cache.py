"""When a planned stage's CUDA graph is captured, which one is dropped, and the guards around it:
the bookkeeping, proven on the CPU (the capture stood in by an eager call)."""

from __future__ import annotations

import pytest
import torch
from helpers import EagerCall, randomise_bn

from lc.models.graph_cache import CAPTURE_AT_USE, GraphCache
from lc.models.irnet import IRNet
from lc.models.region_irnet import planned_tables, run_stage_compressed
from lc.ops.active_set import ActiveSet
from lc.ops.region_tables import bucket_for


class _Capture:
    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1
        return f"graph {self.count}"


def test_a_key_is_captured_at_its_second_use_or_at_once_when_asked():
    assert CAPTURE_AT_USE == 2
    cache, capture = GraphCache(limit=4), _Capture()
    assert cache.lookup("a", capture) is None and capture.count == 0  # met once: eager
    assert cache.lookup("a", capture) == "graph 1"  # met again: captured
    assert cache.lookup("a", capture) == "graph 1" and capture.count == 1  # then replayed
    assert cache.lookup("b", capture, now=True) == "graph 2"  # graphs=True: at first use
    assert len(cache) == 2 and "a" in cache and "c" not in cache


def test_the_least_recently_used_graph_is_dropped_first():
    cache, capture = GraphCache(limit=2), _Capture()
    cache.lookup("a", capture, now=True)
    cache.lookup("b", capture, now=True)
    cache.lookup("a", capture)  # a hit: "a" becomes the most recent
    cache.lookup("c", capture, now=True)  # over the limit: "b" goes, not the older-inserted "a"
    assert "a" in cache and "c" in cache and "b" not in cache
    cache.clear()
    assert len(cache) == 0 and cache.lookup("a", capture) is None  # uses cleared with the graphs


def test_shapes_met_once_are_counted_in_bounded_memory():
    cache, capture = GraphCache(limit=3), _Capture()
    for key in range(1000):  # evaluation: every image its own shape
        assert cache.lookup(key, capture) is None
    assert capture.count == 0 and len(cache._uses) <= 4 * 3
    assert cache.lookup(999, capture) == "graph 1"  # a recent key still remembers its first use
    assert cache.lookup(0, capture) is None  # an old one starts over


def _net() -> IRNet:
    torch.manual_seed(0)
    net = IRNet(width_mult=0.125, block_counts=(1, 2, 2)).eval()
    randomise_bn(net)
    return net


def _stage_input(net: IRNet, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, net.stage_channels[0], 9, 8, generator=gen).relu()
    return x, ActiveSet(torch.rand(2, 9, 8, generator=gen) < 0.5)


def test_a_stage_runs_eagerly_until_its_key_is_captured_and_gives_the_same_numbers(monkeypatch):
    import lc.models.region_graphs as graphs
    from lc.models.region_irnet import _run_graphed

    monkeypatch.setattr(graphs, "GraphedCall", EagerCall)
    EagerCall.captures = 0
    net = _net()
    x, active = _stage_input(net)
    keep = torch.rand(active.mask.shape, generator=torch.Generator().manual_seed(4)) < 0.6
    active3 = ActiveSet(active.mask & keep)
    rows2 = bucket_for(active.num_active, active.num_pixels)  # the graphs' row counts
    rows3 = bucket_for(active3.num_active, active3.num_pixels)
    with torch.no_grad():
        eager2 = run_stage_compressed(net, 2, x, active, graphs=False, num_rows=rows2)
        eager3 = run_stage_compressed(net, 3, eager2, active3, source=active, graphs=False, num_rows=rows3)
        for call in range(1, 4):  # the config's default: eager at the first use, captured at the second
            out2 = _run_graphed(net, 2, x, active, None, torch.float32, None, capture_now=False)
            out3 = _run_graphed(net, 3, out2, active3, active, torch.float32, None, capture_now=False)
            assert EagerCall.captures == (0 if call == 1 else 2)
            torch.testing.assert_close(out2, eager2, rtol=0, atol=0)
            torch.testing.assert_close(out3, eager3, rtol=0, atol=0)
    graphs.clear_graphs()


def test_a_capture_that_fails_is_raised_once_then_its_key_runs_eagerly():
    cache = GraphCache(limit=4)

    def broken():
        raise RuntimeError("operation not permitted when stream is capturing (simulated)")

    with pytest.raises(RuntimeError, match="stream is capturing"):
        cache.lookup("a", broken, now=True)
    for now in (False, True, False):  # no second attempt, with its warm-up runs
        assert cache.lookup("a", broken, now=now) is None
    assert cache.lookup("b", _Capture(), now=True) == "graph 1"  # other keys still capture
    cache.clear()
    with pytest.raises(RuntimeError):  # a cleared cache (new weights) tries again
        cache.lookup("a", broken, now=True)


def test_too_few_rows_for_the_active_pixels_is_refused_on_the_host():
    net = _net()
    x, active = _stage_input(net)
    with pytest.raises(ValueError, match="below the .* active pixels"):
        run_stage_compressed(net, 2, x, active, num_rows=active.num_active - 1)


def test_tables_are_cached_per_compute_dtype():
    """They carry the plan's Triton tiles, which depend on the dtype."""
    net = _net()
    _, active = _stage_input(net)
    with torch.no_grad():
        _, fp32 = planned_tables(net, 2, active, torch.float32)
        _, again = planned_tables(net, 2, active, torch.float32)
        _, bf16 = planned_tables(net, 2, active, torch.bfloat16)
    assert again is fp32 and bf16 is not fp32
