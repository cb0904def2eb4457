"""The op benchmark's plumbing (masks, table shape, files); no timing is asserted."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from lc.bench.gemm_floor import gemm_floor, record_region_ops
from lc.bench.op import COLUMNS, level_titles, random_mask, run_op_bench, save_op_bench
from lc.config import load_config
from lc.models.complexity import count_flops
from lc.models.irnet import IRNet, fold_batchnorm
from lc.models.region_irnet import run_stage_compressed
from lc.ops.active_set import ActiveSet


def test_random_mask_has_exact_counts_per_image():
    mask = random_mask(3, 16, 12, 0.25, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 16, 12)
    assert mask.flatten(1).sum(1).tolist() == [48, 48, 48]
    assert not torch.equal(mask[0], mask[1])


@pytest.mark.parametrize("stage", [2, 3])
def test_gemm_floor_does_exactly_the_stage_arithmetic_at_the_active_pixels(stage):
    """The floor's GEMMs (merged and split 1x1s included) are the dense stage's conv FLOPs x N / P."""
    net = fold_batchnorm(IRNet(width_mult=0.25, block_counts=(1, 2, 2), output_stride=8).eval())
    x = torch.randn(1, net.stage_channels[stage - 2], 10, 12).relu()
    mask = random_mask(1, 10, 12, 0.3, torch.Generator().manual_seed(0))
    calls = record_region_ops(lambda: run_stage_compressed(net, stage, x, ActiveSet(mask)))
    dense_flops, _ = count_flops(net.forward_stage, stage, x)
    floor_flops = sum(2 * c.rows * c.weight.shape[0] * c.weight.shape[1] for c in calls)
    assert all(c.rows == int(mask.sum()) for c in calls)
    assert floor_flops * mask.numel() == dense_flops * int(mask.sum())
    gemm_floor(calls)()  # runs


def test_gemm_floor_needs_recorded_gemms():
    with pytest.raises(ValueError, match="planned path"):
        gemm_floor([])


@pytest.mark.slow
def test_run_and_save_op_bench(tmp_path):
    cfg = load_config(Path(__file__).resolve().parents[1] / "config.yaml", preset="test")
    df = run_op_bench(cfg, devices=["cpu"], warmup=0, runs=1, threads=1)
    assert list(df.columns) == COLUMNS
    assert set(df.level) == {"stage2", "conv3x3", "conv1x7"}
    fractions = sorted({*cfg["bench"]["fractions"], 0.1, 0.25, 0.5, 1.0})
    for _, part in df.groupby("level"):
        assert sorted(part[part.impl == "compressed"].active_fraction) == fractions
        dense = part[part.impl.str.startswith("dense")]
        assert dense.speedup.max() == 1.0 and (dense.speedup <= 1.0).all()
    floor = df[df.impl == "gemm_floor"]
    assert set(floor.level) == {"stage2"} and sorted(floor.active_fraction) == fractions
    assert (df.speedup_x_fraction - df.speedup * df.active_fraction).abs().max() < 1e-12

    titles = level_titles(cfg)
    assert set(titles) == set(df.level)  # every panel gets a readable title
    assert f"{cfg['model']['block_counts'][1]} Block17" in titles["stage2"]
    out = tmp_path / "bench" / "op_speedup.csv"
    save_op_bench(df, out, titles=titles)
    assert out.exists() and out.with_suffix(".png").stat().st_size > 0
    pd.testing.assert_frame_equal(pd.read_csv(out)[["level", "impl"]], df[["level", "impl"]])
    assert not list(out.parent.glob(".*tmp*"))  # nothing half-written left behind
