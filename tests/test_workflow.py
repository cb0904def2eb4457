"""The Snakemake workflow: config schema, lint, the paper DAG, and the test preset run end to end."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lc.config import ConfigError, load_config, resolve_config, validate_config
from lc.report.figures import FIGURES
from lc.report.tables import TABLE_FILES

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "lc/config.schema.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _snakemake(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("preset", ["demo", "test", "paper"])
def test_schema_accepts_every_preset(preset):
    cfg = load_config(REPO / "config.yaml", preset=preset)
    assert cfg["preset"] == preset


def test_schema_rejects_unknown_key_naming_it():
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = resolve_config(raw, "test", {"train": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match=r"train: .*'learning_rate' was unexpected"):
        validate_config(cfg, SCHEMA)


def test_schema_rejects_wrong_type_naming_the_key():
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = resolve_config(raw, "test", {"train": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match=r"train\.batch_size: 'eight' is not of type 'integer'"):
        validate_config(cfg, SCHEMA)


def test_snakefile_rejects_bad_config_with_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate:\n  rho_sweep: high\n")
    result = _snakemake("-n", "--configfile", str(bad))
    assert result.returncode != 0
    assert "evaluate.rho_sweep" in result.stderr + result.stdout


def test_lint_passes():
    result = _snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr


def _job_counts(output: str) -> dict[str, int]:
    block = output.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.MULTILINE)}


def test_paper_dag_lists_every_step():
    result = _snakemake("-n", "reproduce_tables", "--config", "preset=paper")
    assert result.returncode == 0, result.stderr
    jobs = _job_counts(result.stdout)
    assert "synth" not in jobs  # real downloads, no synthetic data
    assert jobs["download"] == 4  # VOC trainval, SBD, Cityscapes gtFine + leftImg8bit (VOC test: server)
    assert jobs["prepare_voc"] == jobs["prepare_cityscapes"] == 1
    assert jobs["pretrain"] == 2 and jobs["train"] == 5  # dsn, dsn_dropout, lc, mc on VOC; lc on Cityscapes
    assert jobs["evaluate"] == 6 and jobs["evaluate_multi_scale"] == 2
    assert jobs["sweep"] == 1 and jobs["export_cityscapes"] == 1
    for rule in ("bench_op", "bench_models", "bench_stages", "bench_rho", "bench_table6",
                 "analyze_difficulty", "provenance", "tables_markdown",
                 *(f"build_table{n}" for n in range(1, 7)),
                 *(f"figure_{name}" for name in FIGURES)):
        assert jobs.get(rule) == 1, rule
    assert jobs["analyze_stages"] == 2


def test_paper_dag_with_per_rho_training(tmp_path):
    override = tmp_path / "retrain.yaml"
    override.write_text("evaluate:\n  sweep_retrain: true\n")
    result = _snakemake("-n", "reproduce_tables", "--config", "preset=paper", "--configfile", str(override))
    assert result.returncode == 0, result.stderr
    paper_rhos = len(load_config(REPO / "config.yaml", preset="paper")["evaluate"]["rho_sweep"])
    assert _job_counts(result.stdout)["train_rho"] == paper_rhos


def test_paper_training_asks_for_gpus():
    result = _snakemake("-n", "results/paper/runs/voc/lc/checkpoint.pt", "--config", "preset=paper")
    assert result.returncode == 0, result.stderr
    jobs = result.stdout.split("\nrule ")
    train_jobs = [job for job in jobs if job.startswith(("pretrain:", "train:"))]
    assert len(train_jobs) == 2 and all("gpu=1" in job for job in train_jobs)


def _copy_repo(dest: Path) -> Path:
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("workflow", "envs", "results/paper"):
        shutil.copytree(REPO / name, dest / name)
    return dest


def test_test_preset_runs_end_to_end(tmp_path):
    """The whole DAG on the test preset in a copy of the repository; a second run does nothing."""
    work = _copy_repo(tmp_path)
    result = _snakemake("--cores", "2", "reproduce_tables", "--config", "preset=test", cwd=work, timeout=600)
    logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in (work / "results/test/logs").rglob("*.log")
                     if "rror" in p.read_text()) if (work / "results/test/logs").exists() else ""
    assert result.returncode == 0, result.stderr[-5000:] + logs
    tables = work / "results/test/tables"
    for name in TABLE_FILES.values():
        frame = pd.read_csv(tables / name)
        paper_cols = [c for c in frame.columns if c.startswith("paper_")]
        assert "note" in frame.columns
        ours = frame[[c for c in ("miou", "ms", "fps") if c in frame.columns]]
        assert ours.notna().any().any(), f"{name} has no computed value"
        if paper_cols:
            assert frame[paper_cols].notna().any().any(), name
    assert (tables / "tables.md").stat().st_size > 0
    for name in FIGURES:
        assert (work / f"results/test/figures/{name}.png").stat().st_size > 10_000, name
        assert (work / f"results/test/figures/{name}.pdf").exists(), name
    assert (work / "results/test/provenance.json").exists()
    again = _snakemake("-n", "--cores", "2", "reproduce_tables", "--config", "preset=test", cwd=work)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout
    report = _snakemake("--cores", "2", "report", "--config", "preset=test", cwd=work)
    html = work / "results/test/report.html"
    assert report.returncode == 0 and html.stat().st_size > 100_000, report.stderr[-3000:]
    assert "fig7a_miou_vs_speed.png" in html.read_text(errors="ignore")
