"""The "LC across backbones" experiment: --backbone config merging, the table and figure builder, the
synthetic weights through the same loading code, and the workflow target's DAG."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import copy_repo

from lc.config import ConfigError, load_config, with_backbone
from lc.models.backbones import build_backbone, synthetic_imagenet_state
from lc.report import outputs
from lc.report.backbones import BACKBONES_COLUMNS, write_backbones_outputs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def test_cfg() -> dict:
    return load_config(REPO / "config.yaml", preset="test")


def test_with_backbone_merges_its_keys_over_model(test_cfg):
    cfg = with_backbone(test_cfg, "resnet101")
    assert cfg["model"]["backbone"] == "resnet"
    assert cfg["model"]["layers"] == [1, 1, 1, 1]
    assert cfg["model"]["head_channels"] == test_cfg["model"]["head_channels"]  # the rest is model:'s
    assert "backbone" not in test_cfg["model"]  # the input is not changed
    assert with_backbone(test_cfg, "irnet")["model"] == test_cfg["model"]
    with pytest.raises(ConfigError, match="backbones.models"):
        with_backbone(test_cfg, "vgg16")


def test_synthetic_weights_load_through_the_backbone(test_cfg):
    model_cfg = with_backbone(test_cfg, "resnet101")["model"]
    state = synthetic_imagenet_state(model_cfg, seed=3)
    assert "fc.weight" in state
    report = build_backbone(model_cfg).load_imagenet(state, model_cfg)
    assert "fc.weight" in report["skipped"] and report["loaded"]
    state["layer1.0.conv1.weight"] = state["layer1.0.conv1.weight"][:1]
    with pytest.raises(ValueError, match="shape mismatch layer1.0.conv1.weight"):
        build_backbone(model_cfg).load_imagenet(state, model_cfg)


def _write_inputs(root: Path, cfg: dict) -> None:
    for i, backbone in enumerate(cfg["backbones"]["compare"]):
        rhos = [0.995, 0.985, 0.95, 0.9, 0.8]
        base = root / outputs.backbone_dir(backbone, "voc")
        base.mkdir(parents=True)
        pd.DataFrame({"rho": [1.0], "miou": [50.0 + i], "device": ["cpu"]}).to_csv(
            root / outputs.backbone_file(backbone, "voc", "sweep_dense"), index=False)
        pd.DataFrame({"rho": rhos, "miou": [51.0 + i - r for r in range(5)],
                      "stage1_pct": [10, 20, 30, 40, 50], "stage2_pct": [5] * 5,
                      "stage3_pct": [85, 75, 65, 55, 45], "device": ["cpu"] * 5}).to_csv(
            root / outputs.backbone_file(backbone, "voc", "sweep_lc"), index=False)
        pd.DataFrame({"rho": rhos, "measured_speedup": [1.0, 1.1, 1.2, 1.3, 1.5],
                      "predicted_speedup": [1.1, 1.2, 1.3, 1.4, 1.6], "stage_flop_shares": ["10/40/50"] * 5,
                      "lc_params_m": [1.0] * 5, "dense_gflops": [2.0] * 5, "lc_gflops": [1.5] * 5,
                      "device": ["cpu: test"] * 5, "mask_source": ["trained:x"] * 5}).to_csv(
            root / outputs.backbone_file(backbone, "voc", "bench"), index=False)


def test_backbones_table_and_figure(tmp_path, test_cfg):
    cfg = {**test_cfg, "evaluate": {**test_cfg["evaluate"], "rho": 0.985}}
    with pytest.raises(FileNotFoundError, match="snakemake backbones"):
        write_backbones_outputs(cfg, tmp_path)
    _write_inputs(tmp_path, cfg)
    paths = write_backbones_outputs(cfg, tmp_path)
    assert all(p.is_file() for p in paths)
    table = pd.read_csv(tmp_path / outputs.BACKBONES_TABLE)
    assert list(table.columns) == BACKBONES_COLUMNS
    assert list(table["backbone"]) == cfg["backbones"]["compare"]
    row = table.iloc[1]  # resnet101 at rho 0.985: the second sweep row
    assert row["miou_lc"] == pytest.approx(51.0) and row["diff_miou"] == pytest.approx(0.0)
    assert row["measured_speedup"] == pytest.approx(1.1) and row["stage1_pct"] == 20
    assert "layers 1/1/1/1" in row["architecture"]
    assert "| resnet101 |" in (tmp_path / outputs.BACKBONES_MD).read_text()


def _dry_run(work: Path, *args: str) -> str:
    """A dry-run in a copy of the workflow (Snakemake writes the resolved config below results/)."""
    copy_repo(work)
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "backbones", *args], cwd=work,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_paper_dry_run_shows_every_step_per_backbone(tmp_path):
    out = _dry_run(tmp_path, "--config", "preset=paper")
    shells = re.findall(r"^.*-m lc\.cli (\w[\w-]*) .*--backbone (\w+).*$", out, re.MULTILINE)
    for dataset in ("voc", "cityscapes"):
        for variant in ("irnet", "dsn", "lc"):
            assert f"backbones/resnet101/{dataset}/{variant}/checkpoint.pt" in out
        for kind in ("sweep_dense", "sweep_lc", "bench"):
            for backbone in ("irnet", "resnet101"):
                assert f"backbones/{backbone}/{dataset}/{kind}.csv" in out
    assert {"weights", "train", "sweep", "bench"} <= {cmd for cmd, bb in shells if bb == "resnet101"}
    assert "results/paper/tables/backbones.csv" in out
    assert "reproduce_tables" not in out  # a target of its own
