"""Model-level benchmarks (lc.bench.timing, lc.bench.models, lc.bench.table6, `lc bench ...`) on tiny sizes.

No timing assertions: only that every benchmark writes its columns with positive finite times,
and that the routing masks it times with are the ones it claims.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lc.bench.masks import MASK_SOURCE_PAPER, TrainedMasks, mask_shares, paper_share_masks, paper_stage_shares
from lc.bench.models import (
    MODEL_COLUMNS,
    BenchSetup,
    build_network,
    prescribed_routing,
    run_models_bench,
)
from lc.bench.rho import RHO_COLUMNS, run_rho_bench
from lc.bench.stages import STAGE_COLUMNS, bound_lines, run_stages_bench
from lc.bench.table6 import TABLE6_COLUMNS, run_table6_bench
from lc.bench.timing import Timing, measure, measure_interleaved, paired_ratio, set_threads, write_csv
from lc.config import load_config
from lc.report.paper import load_paper_table

REPO = Path(__file__).resolve().parents[1]
# smaller than the test preset: 32 px images (a 4 x 4 LC grid), no extra warm-up, two runs, one
# thread (CI's cores are shared by the test processes)
FAST = {"bench": {"image_size": 32, "warmup": 0, "runs": 2, "mask_sets": 2, "threads": 1}}


def _cfg(**bench) -> dict:
    overrides = copy.deepcopy(FAST)
    overrides["bench"].update(bench)
    return load_config(REPO / "config.yaml", preset="test", overrides=overrides)


TABLE1 = load_paper_table(1)


def _setup(cfg: dict, checkpoint=None) -> BenchSetup:
    return BenchSetup.from_config(cfg, checkpoint=checkpoint, device="cpu", paper_table1=TABLE1)


def _check_times(df: pd.DataFrame, columns: list[str], *time_columns: str) -> None:
    assert list(df.columns) == columns
    for column in time_columns:
        values = df[column].to_numpy(float)
        assert np.isfinite(values).all() and (values > 0).all(), f"{column}: {values}"
    assert df["device"].str.startswith("cpu").all()


# --- masks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.985, 0.95, 0.8])
@pytest.mark.parametrize("grid", [(64, 64), (13, 17)])
def test_paper_share_masks_hold_the_published_shares(rho: float, grid: tuple[int, int]) -> None:
    row = load_paper_table(1).set_index("rho").loc[rho]
    mask2, mask3 = paper_share_masks(rho, TABLE1, 3, *grid, torch.Generator().manual_seed(0))
    pixels = grid[0] * grid[1]
    passed2 = (1 - row["stage1_pct"] / 100) * pixels
    passed3 = (1 - (row["stage1_pct"] + row["stage2_pct"]) / 100) * pixels
    for b in range(3):
        assert abs(int(mask2[b].sum()) - passed2) <= 1  # exact counts up to rounding
        assert abs(int(mask3[b].sum()) - passed3) <= 1
    assert not (mask3 & ~mask2).any()  # stage 3 sees a subset of stage 2's pixels
    stage1_pct, stage2_pct = mask_shares([(mask2, mask3)])
    assert abs(stage1_pct - row["stage1_pct"]) < 100 / pixels + 1e-9
    assert abs(stage2_pct - row["stage2_pct"]) < 2 * 100 / pixels + 1e-9


def test_paper_share_masks_are_spatially_coherent() -> None:
    mask2, _ = paper_share_masks(0.8, TABLE1, 4, 64, 64, torch.Generator().manual_seed(1))
    # share of horizontally adjacent pairs that agree: ~0.5 for independent pixels at 44% active
    agree = (mask2[..., 1:] == mask2[..., :-1]).float().mean()
    assert agree > 0.9


def test_paper_stage_shares_between_and_outside_the_table() -> None:
    assert paper_stage_shares(1.0, TABLE1) == (0.0, 0.0)
    low, high = paper_stage_shares(0.985, TABLE1), paper_stage_shares(0.995, TABLE1)
    mid = paper_stage_shares(0.99, TABLE1)
    assert mid[0] == pytest.approx((low[0] + high[0]) / 2)
    with pytest.raises(ValueError, match="Table 1"):
        paper_stage_shares(0.5, TABLE1)


def test_lc_timing_without_masks_names_the_fix() -> None:
    cfg = _cfg()
    setup = BenchSetup.from_config(cfg, device="cpu")  # neither a checkpoint nor Table 1
    model = build_network("lc", cfg["model"], torch.device("cpu"))
    with pytest.raises(ValueError, match="checkpoint.*Table 1"):
        setup.mask_sets_for(0.985, model)


# --- timing and routing ---------------------------------------------------------------------------
def test_measure_warms_up_then_times_with_torch_benchmark() -> None:
    calls = []

    def step(i: int) -> None:
        calls.append(i)
        time.sleep(0.003)

    timing = measure(step, torch.device("cpu"), warmup=2, runs=5)
    # the warm-up, then per run torch.utils.benchmark's one-call probe and the timed call, both
    # with the run's index (LC benchmarks cycle their mask sets by it: every set gets timed)
    assert calls == [0, 1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert timing.calls == 5 and len(timing.times_ms) == 5
    assert all(t >= 3.0 for t in timing.times_ms)  # the sleep is inside every timed call
    assert timing.p25 <= timing.median <= timing.p75
    row = timing.row(batch_size=4)
    assert row["fps"] == pytest.approx(4e3 / row["ms_median"]) and row["runs"] == 5
    with pytest.raises(ValueError):
        measure(step, torch.device("cpu"), warmup=0, runs=0)


def test_measure_interleaved_times_every_method_once_per_round() -> None:
    calls = []
    steps = {name: (lambda i, n=name: (calls.append((n, i)), time.sleep(0.002))) for name in ("dense", "lc")}
    timings = measure_interleaved(steps, "cpu", warmup=1, runs=3)
    # the warm-up round, then the rounds: every method's i-th call beside the others' i-th call
    assert calls == [("dense", 0), ("lc", 0)] + [(n, i) for i in range(3) for n in ("dense", "lc")]
    assert {n: len(t.times_ms) for n, t in timings.items()} == {"dense": 3, "lc": 3}
    assert all(t >= 2.0 for timing in timings.values() for t in timing.times_ms)  # the sleep is timed
    with pytest.raises(ValueError):
        measure_interleaved(steps, "cpu", warmup=0, runs=0)


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    # a drifting machine: both methods slow down together in round 2; the mean of times would not
    dense, lc = Timing([100.0, 300.0, 110.0], 3), Timing([50.0, 150.0, 50.0], 3)
    assert paired_ratio(dense, lc) == pytest.approx(2.0)
    assert dense.median / lc.median == pytest.approx(2.2)  # what unpaired medians would say
    with pytest.raises(ValueError, match="same interleaved rounds"):
        paired_ratio(dense, Timing([1.0], 1))


def test_measure_times_at_the_threads_the_benchmark_set() -> None:
    seen = []
    before = torch.get_num_threads()
    try:
        set_threads(1)
        measure(lambda _i: seen.append(torch.get_num_threads()), "cpu", warmup=1, runs=2)
        assert set(seen) == {1}  # torch.utils.benchmark's default would be 1 anyway: check 2 as well
        seen.clear()
        set_threads(2)
        measure(lambda _i: seen.append(torch.get_num_threads()), "cpu", warmup=1, runs=2)
        assert set(seen) == {2}
        with pytest.raises(ValueError, match="threads"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_prescribed_routing_replaces_the_masks_through_the_router_hook() -> None:
    cfg = _cfg()
    model = build_network("lc", cfg["model"], torch.device("cpu"), rho=0.985)
    images = torch.randn(2, 3, 32, 32)
    grid = model.output_size(32, 32)
    sets = [paper_share_masks(0.8, TABLE1, 2, *grid, torch.Generator().manual_seed(s)) for s in range(2)]
    routing = prescribed_routing(sets)
    with torch.inference_mode():
        for i in (1, 0):
            routing.select(i)
            out = model(images, router=routing)
            assert torch.equal(out.stage_masks[1], sets[i][0]) and torch.equal(out.stage_masks[2], sets[i][1])
        own = model(images, rho=1.0)  # without the router: the model's own routing, nothing leaves early
    assert not vars(model).keys() & {"_next_mask", "forward"}  # nothing patched on the instance
    assert own.stage_masks[2].all()


# --- the benchmarks -------------------------------------------------------------------------------
@pytest.mark.slow
def test_models_bench_columns_and_speedups(tmp_path) -> None:
    cfg = _cfg()
    df = run_models_bench(_setup(cfg))
    _check_times(df, MODEL_COLUMNS, "ms_median", "ms_p25", "ms_p75", "fps", "params_m", "gflops")
    assert list(df["method"]) == list(cfg["bench"]["models"])
    lc = df.set_index("method").loc[["lc", "lc_fast"]]
    assert (lc["mask_source"] == MASK_SOURCE_PAPER).all()
    assert lc.loc["lc", "rho"] == cfg["evaluate"]["rho"]
    assert lc.loc["lc_fast", "rho"] == cfg["evaluate"]["fast_rho"]
    # 4 x 4 grids: shares within one pixel of the paper's
    table1 = load_paper_table(1).set_index("rho")
    for method, rho in (("lc", cfg["evaluate"]["rho"]), ("lc_fast", cfg["evaluate"]["fast_rho"])):
        assert abs(lc.loc[method, "stage1_pct"] - table1.loc[rho, "stage1_pct"]) <= 100 / 16
    irnet = df.set_index("method").loc["irnet"]
    assert irnet["speedup_vs_irnet"] == 1 and irnet["predicted_speedup_vs_irnet"] == 1
    assert (df["runs"] == _setup(cfg).runs).all()  # every network timed in the same rounds
    # fewer FLOPs at the lower threshold: the prediction follows the shares
    assert lc.loc["lc_fast", "predicted_speedup_vs_irnet"] > lc.loc["lc", "predicted_speedup_vs_irnet"]
    assert not df.set_index("method").loc["irnet", "full_size"]  # the test preset's own network
    assert df.set_index("method").loc["deeplab_v2", "full_size"]
    out = write_csv(df, tmp_path / "bench" / "table3_speed.csv")
    assert list(pd.read_csv(out).columns) == MODEL_COLUMNS and not list(out.parent.glob(".*tmp*"))


@pytest.mark.slow
def test_stages_bench_columns() -> None:
    df = run_stages_bench(_setup(_cfg()))
    _check_times(df, STAGE_COLUMNS, "ms_median")
    assert list(df.groupby("method", sort=False).size().items()) == [("lc", 3), ("lc_fast", 3), ("irnet", 3)]
    fast = df[df["method"] == "lc_fast"].set_index("stage")["active_pct"]
    assert fast[1] == 100 and fast[1] > fast[2] > fast[3] > 0
    assert (df[df["method"] == "irnet"]["active_pct"] == 100).all()
    # the GEMM floor: timed for the routed stages of LC only
    floor = df.dropna(subset=["gemm_floor_ms"])
    routed = set(zip(floor["method"], floor["stage"], strict=True))
    assert routed == {("lc", 2), ("lc", 3), ("lc_fast", 2), ("lc_fast", 3)}
    assert (floor["gemm_floor_ms"] > 0).all()
    # dense_rate_ms: a region stage at dense IRNet's time per pixel; stage 1 is dense in both
    ms = df.set_index(["method", "stage"])
    for method in ("lc", "lc_fast"):
        assert ms.loc[(method, 1), "dense_rate_ms"] == ms.loc[(method, 1), "ms_median"]
        for stage in (2, 3):
            expected = ms.loc[(method, stage), "active_pct"] / 100 * ms.loc[("irnet", stage), "ms_median"]
            assert ms.loc[(method, stage), "dense_rate_ms"] == pytest.approx(expected)
    predicted = df.groupby("method")["predicted_speedup_vs_irnet"].agg(["min", "max"])
    assert (predicted["min"] == predicted["max"]).all() and predicted.loc["irnet", "min"] == 1
    assert predicted.loc["lc_fast", "min"] > predicted.loc["lc", "min"] > 1
    lines = bound_lines(df)
    assert [line.split()[0] for line in lines] == ["lc", "lc_fast"]
    assert all(line.count(" x") == 5 for line in lines)  # FLOP-predicted and the four ways


@pytest.mark.slow
def test_table6_bench_columns() -> None:
    cfg = _cfg()
    df = run_table6_bench(_setup(cfg))
    _check_times(df, TABLE6_COLUMNS, "ms_median", "fps")
    assert list(df["setting"]) == ["single_scale", "multi_scale", "multi_scale_crf"]
    assert list(df["crf"]) == [False, False, True]
    assert df["scales"].iloc[1] == " ".join(f"{s:g}" for s in cfg["evaluate"]["scales"])
    # the three settings timed in the same rounds: single scale's own paired ratio is exactly 1
    assert df["time_vs_single_scale"].iloc[0] == 1.0
    assert (df["time_vs_single_scale"] > 0).all() and (df["runs"] == df["runs"].iloc[0]).all()


def test_cli_bench_rho_writes_the_sweep(tmp_path, monkeypatch) -> None:
    from lc.cli.main import main

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)

    out = tmp_path / "rho_speed.csv"
    assert main(["bench", "rho", "--config", str(REPO / "config.yaml"), "--preset", "test", "--device", "cpu",
                 "--warmup", "0", "--runs", "1", "--threads", "1", "--out", str(out), "--checkpoint",
                 str(tmp_path / "missing.pt")]) == 0
    df = pd.read_csv(out)
    _check_times(df, [*RHO_COLUMNS, "node_access"], "ms_median", "fps")
    assert (df["node_access"] == "local").all()  # not a SLURM job (lc.bench.timing.node_access)
    cfg = load_config(REPO / "config.yaml", preset="test")
    assert df["rho"].tolist() == pytest.approx(cfg["evaluate"]["rho_sweep"])
    assert (df["mask_source"] == MASK_SOURCE_PAPER).all()  # the checkpoint does not exist
    assert df["device"].str.endswith(", 1 threads").all()  # timed at the explicit --threads
    assert df.set_index("rho").loc[1.0, "stage1_pct"] == 0


@pytest.mark.slow
def test_trained_masks_come_from_the_checkpoint(prepared_test_cfg, tmp_path) -> None:
    from lc.models.cascade import LayerCascade
    from lc.training.checkpoint import make_model_spec, save_checkpoint

    cfg = copy.deepcopy(prepared_test_cfg)
    cfg["bench"].update(FAST["bench"])
    torch.manual_seed(0)
    trained = LayerCascade(21, "lc", cfg["model"], rho=0.985).eval()
    ckpt = save_checkpoint(tmp_path / "checkpoint.pt", {
        "model": trained.state_dict(), "iteration": 0,
        "model_spec": make_model_spec("cascade", "lc", 21, cfg["model"], 0.985, dataset="voc")})
    setup = _setup(cfg, checkpoint=ckpt)
    assert setup.mask_source == f"trained:{ckpt}"
    image = torch.nn.functional.interpolate(setup.masks.images[0][None], size=(32, 32), mode="bilinear",
                                            align_corners=False)
    with torch.inference_mode():  # random weights: a rho at the median top probability decides half
        rho = float(trained(image, rho=1.0).stage_logits[0].softmax(1).amax(1).median()) + 1e-6
        own = trained(image, rho=rho)
    lc = build_network("lc", setup.model_cfg, setup.device, rho)
    sets = setup.mask_sets_for(rho, lc)
    assert own.stage_masks[1].any() and not own.stage_masks[1].all()  # the masks do depend on routing
    assert torch.equal(sets[0][0], own.stage_masks[1]) and torch.equal(sets[0][1], own.stage_masks[2])
    df = run_models_bench(_setup(_with_models(cfg, ["irnet", "lc"]), checkpoint=ckpt))
    assert df.set_index("method").loc["lc", "mask_source"] == f"trained:{ckpt}"
    assert math.isfinite(df.set_index("method").loc["lc", "ms_median"])


@pytest.mark.slow
def test_backbone_bench_times_dense_and_lc_in_the_same_rounds(prepared_test_cfg, tmp_path) -> None:
    from lc.bench.backbones import BACKBONE_BENCH_COLUMNS, backbone_rhos, run_backbone_bench
    from lc.models.cascade import LayerCascade
    from lc.training.checkpoint import make_model_spec, save_checkpoint

    cfg = copy.deepcopy(prepared_test_cfg)
    cfg["bench"].update(FAST["bench"])
    cfg["backbones"]["rhos"] = [0.9]
    torch.manual_seed(0)
    trained = LayerCascade(21, "lc", cfg["model"], rho=0.985).eval()
    ckpt = save_checkpoint(tmp_path / "checkpoint.pt", {
        "model": trained.state_dict(), "iteration": 0,
        "model_spec": make_model_spec("cascade", "lc", 21, cfg["model"], 0.985, dataset="voc")})
    out = tmp_path / "bench" / "backbone_irnet.csv"
    df = run_backbone_bench(cfg, ckpt, out, "irnet", device="cpu")
    assert list(pd.read_csv(out).columns) == BACKBONE_BENCH_COLUMNS
    assert list(df["rho"]) == backbone_rhos(cfg) == [0.985, 0.9]
    _check_times(df, BACKBONE_BENCH_COLUMNS, "dense_ms", "lc_ms", "measured_speedup", "predicted_speedup")
    assert (df["mask_source"] == f"trained:{ckpt}").all()
    assert (df["stage1_pct"] + df["stage2_pct"] <= 100).all()


def _with_models(cfg: dict, models: list[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["bench"]["models"] = models
    return cfg


class _OwnModelMasks(TrainedMasks):
    """Stands for the LC model trained at one rho: a fixed share of each image decided at stage 1."""

    def __init__(self, name: str, stage1_share: float):  # no checkpoint, no data set
        self.name, self.stage1_share = f"trained:{name}", stage1_share

    def masks(self, rho, batch, image_hw, grid_hw, index, flip=False):
        pixels = grid_hw[0] * grid_hw[1]
        passed = torch.arange(pixels) >= round(self.stage1_share * pixels)
        mask2 = passed.view(1, *grid_hw).expand(batch, *grid_hw).clone()
        return mask2, mask2.clone()


def test_rho_bench_times_each_rho_with_its_own_model():
    """Fig. 7(a) with one LC model per rho: a rho with its own model is routed (and timed) with that
    model's masks and says so; the others fall back to the shared source."""
    cfg = _cfg()
    setup = _setup(cfg)
    setup.rho_masks = {0.9: _OwnModelMasks("runs/voc/lc_rho0.900/checkpoint.pt", 0.5)}
    table = run_rho_bench(setup).set_index("rho")
    assert table.loc[0.9, "mask_source"] == "trained:runs/voc/lc_rho0.900/checkpoint.pt"
    assert table.loc[0.9, "stage1_pct"] == pytest.approx(50.0)
    assert table.loc[0.8, "mask_source"] == MASK_SOURCE_PAPER
    assert table.loc[1.0, "stage1_pct"] == pytest.approx(0.0)
    assert setup.source_of("lc", 0.9) == table.loc[0.9, "mask_source"]


def test_rho_bench_times_every_rho_in_the_same_rounds(monkeypatch):
    import lc.bench.rho as rho_bench

    calls = []

    def recording(steps, device, warmup, runs):
        calls.append(list(steps))
        return measure_interleaved(steps, device, warmup, runs)

    monkeypatch.setattr(rho_bench, "measure_interleaved", recording)
    cfg = _cfg()
    table = run_rho_bench(_setup(cfg))
    assert calls == [[float(r) for r in cfg["evaluate"]["rho_sweep"]]]  # one interleaved timing, every rho
    assert list(table["rho"]) == calls[0]


def test_rho_checkpoint_argument():
    from lc.cli.main import build_parser

    args = build_parser().parse_args(["bench", "rho", "--out", "x.csv", "--rho-checkpoint", "0.9=a.pt",
                                      "--rho-checkpoint", "0.8=b.pt"])
    assert dict(args.rho_checkpoint) == {0.9: "a.pt", 0.8: "b.pt"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "rho", "--out", "x.csv", "--rho-checkpoint", "1.5=a.pt"])
