"""The op benchmark's plumbing (masks, table shape, files); no timing is asserted."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from lc.bench.op import COLUMNS, level_titles, random_mask, run_op_bench, save_op_bench
from lc.config import load_config


def test_random_mask_has_exact_counts_per_image():
    mask = random_mask(3, 16, 12, 0.25, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 16, 12)
    assert mask.flatten(1).sum(1).tolist() == [48, 48, 48]
    assert not torch.equal(mask[0], mask[1])


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
    assert (df.speedup_x_fraction - df.speedup * df.active_fraction).abs().max() < 1e-12

    titles = level_titles(cfg)
    assert set(titles) == set(df.level)  # every panel gets a readable title
    assert f"{cfg['model']['block_counts'][1]} Block17" in titles["stage2"]
    out = tmp_path / "bench" / "op_speedup.csv"
    save_op_bench(df, out, titles=titles)
    assert out.exists() and out.with_suffix(".png").stat().st_size > 0
    pd.testing.assert_frame_equal(pd.read_csv(out)[["level", "impl"]], df[["level", "impl"]])
    assert not list(out.parent.glob(".*tmp*"))  # nothing half-written left behind
