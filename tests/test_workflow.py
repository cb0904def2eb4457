"""The Snakemake workflow: config schema, lint, the paper DAG, and the test preset run end to end.

Snakemake always runs on a copy of the repository (tests/helpers.py: copy_repo, snakemake), and job
counts come from `--forceall` dry runs: what a data/ or results/ folder already holds changes nothing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import copy_repo, snakemake

from lc.config import ConfigError, load_config, resolve_config, validate_config
from lc.report.figures import FIGURES
from lc.report.tables import TABLE_FILES

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "lc/config.schema.yaml"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One copy of the repository for this module's dry runs."""
    return copy_repo(tmp_path_factory.mktemp("workflow"))


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


@pytest.mark.slow
def test_snakefile_rejects_bad_config_with_the_key(work, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate:\n  rho_sweep: high\n")
    result = snakemake("-n", "--configfile", str(bad), cwd=work)
    assert result.returncode != 0
    assert "evaluate.rho_sweep" in result.stderr + result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["demo", "paper"])
def test_lint_passes(work, preset):
    result = snakemake("--lint", "--config", f"preset={preset}", cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr


def _job_counts(output: str) -> dict[str, int]:
    block = output.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.MULTILINE)}


def _jobs(output: str) -> list[dict[str, str]]:
    """Each job of a dry-run (-p): its rule, input, output, resources and shell command lines."""
    jobs = []
    for block in output.split("\nrule ")[1:]:
        job = {"rule": block.split(":", 1)[0]}
        for key in ("input", "output", "resources"):
            match = re.search(rf"^    {key}: (.*)$", block, re.MULTILINE)
            job[key] = match.group(1) if match else ""
        # jobs run `<python> -m lc.cli`; training inside `{ echo <attempt header>; ...; } | tee`
        match = re.search(r"^(?:Shell command: )?(\{ echo .*|OMP_NUM_THREADS=.*"
                          r"|\S*(?:python|PYTHON)\S* -m lc\.cli.*)$", block, re.MULTILINE)
        job["shell"] = match.group(1) if match else ""
        jobs.append(job)
    return jobs


def _paper_dry_run(work: Path, *args: str) -> subprocess.CompletedProcess:
    result = snakemake("-n", "-p", "--forceall", "reproduce_tables", "--config", "preset=paper", *args,
                       cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def paper_dry(work) -> subprocess.CompletedProcess:
    """The paper preset's whole DAG, listed once for the module."""
    return _paper_dry_run(work)


@pytest.mark.slow
def test_paper_dag_lists_every_step(paper_dry):
    result = paper_dry
    jobs = _job_counts(result.stdout)
    paper = load_config(REPO / "config.yaml", preset="paper")
    assert "synth" not in jobs  # real downloads, no synthetic data
    assert jobs["download"] == 4  # VOC trainval, SBD, Cityscapes gtFine + leftImg8bit (VOC test: server)
    assert jobs["weights"] == 1  # timm's ImageNet weights feed both pretrainings
    assert jobs["prepare_voc"] == jobs["prepare_cityscapes"] == 1
    # VOC: irnet, dsn, dsn_dropout, mc, lc, the equal-budget DSN + one LC per other rho; Cityscapes:
    # irnet, dsn, lc
    per_rho = [r for r in paper["evaluate"]["rho_sweep"] if r < 1 and r != paper["train"]["rho"]]
    assert jobs["train"] == 5 + 1 + len(per_rho) + 3
    assert jobs["evaluate"] == 6 + 2 + 1  # Table 2 on VOC, LC multi-scale (+ CRF), Cityscapes LC
    assert jobs["recalibrate_bn"] == 2  # BN of the truncated ImageNet start, per data set
    assert jobs["sweep"] == 1 and jobs["export_cityscapes"] == 1
    for rule in ("bench_op", "bench_models", "bench_stages", "bench_rho", "bench_table6",
                 "analyze_difficulty", "provenance", "tables_markdown", "model_info",
                 *(f"build_table{n}" for n in range(1, 7)),
                 *(f"figure_{name}" for name in FIGURES)):
        assert jobs.get(rule) == 1, rule
    assert jobs["analyze_stages"] == 2


def _train_jobs(result) -> dict[str, dict[str, str]]:
    """run folder (runs/<dataset>/<run>) -> its train job."""
    return {re.search(r"runs/(\w+/[\w.]+)/checkpoint\.pt", job["output"]).group(1): job
            for job in _jobs(result.stdout) if job["rule"] == "train"}


@pytest.mark.slow
def test_paper_dag_weights_then_dsn_then_one_lc_per_rho(paper_dry):
    """Issue 11: ImageNet weights feed pretraining, LC starts from DSN, one LC model per rho."""
    paper = load_config(REPO / "config.yaml", preset="paper")
    train = _train_jobs(paper_dry)
    recalibrate = {job["output"]: job for job in _jobs(paper_dry.stdout) if job["rule"] == "recalibrate_bn"}
    for dataset in ("voc", "cityscapes"):  # weights -> BN recalibration -> IRNet
        start = f"results/paper/runs/{dataset}/imagenet_bn/start.pt"
        assert "weights/inception_resnet_v2.pth" in recalibrate[start]["input"]
        irnet = train[f"{dataset}/irnet"]
        assert start in irnet["input"] and f"--init {start}" in irnet["shell"]
    # Table 2's equal-budget control starts where LC starts and trains as DSN
    assert "runs/voc/dsn/checkpoint.pt" in train["voc/dsn_budget"]["input"]
    assert "--variant dsn " in train["voc/dsn_budget"]["shell"]
    table2 = next(job for job in _jobs(paper_dry.stdout) if job["rule"] == "build_table2")
    assert "runs/voc/dsn_budget/eval_val.json" in table2["input"]
    for dataset in ("voc", "cityscapes"):
        assert f"runs/{dataset}/dsn/checkpoint.pt" in train[f"{dataset}/lc"]["input"]
        assert f"runs/{dataset}/irnet/checkpoint.pt" in train[f"{dataset}/dsn"]["input"]
    assert "runs/voc/dsn/checkpoint.pt" in train["voc/dsn_dropout"]["input"]
    assert "runs/voc/irnet/checkpoint.pt" in train["voc/mc"]["input"]
    rho_runs = sorted(run for run in train if run.startswith("voc/lc_rho"))
    expected = sorted(f"voc/lc_rho{r:.3f}" for r in paper["evaluate"]["rho_sweep"]
                      if r < 1 and r != paper["train"]["rho"])
    assert rho_runs == expected  # rho = 1 is the DSN run, rho = train.rho the main LC run: no duplicate
    for run in rho_runs:
        assert f"--rho {float(run.split('lc_rho')[1]):g}" in train[run]["shell"]
    sweep = next(job for job in _jobs(paper_dry.stdout) if job["rule"] == "sweep")
    assert "runs/voc/dsn/checkpoint.pt" in sweep["input"] and "runs/voc/lc/checkpoint.pt" in sweep["input"]
    fast = f"runs/voc/lc_rho{paper['evaluate']['fast_rho']:.3f}/checkpoint.pt"
    bench = {job["rule"]: job for job in _jobs(paper_dry.stdout)}
    assert fast in bench["bench_models"]["input"] and f"--fast-checkpoint results/paper/{fast}" in bench[
        "bench_models"]["shell"]
    for run in rho_runs:  # Fig. 7(a): every rho with a model of its own is timed with its masks
        rho = float(run.split("lc_rho")[1])
        ckpt = f"results/paper/runs/{run}/checkpoint.pt"
        assert ckpt in bench["bench_rho"]["input"]
        assert f"--rho-checkpoint {rho:g}={ckpt}" in bench["bench_rho"]["shell"]


@pytest.mark.slow
def test_paper_export_model_trains_on_trainval(work, tmp_path):
    """With VOC test images configured, the VOC export's LC trains on evaluate.export_train_split."""
    override = tmp_path / "voc_test.yaml"
    override.write_text("data:\n  archives:\n    voc2012_test: {md5: 0123456789abcdef0123456789abcdef}\n")
    result = _paper_dry_run(work, "--configfile", str(override))
    train = _train_jobs(result)
    assert "--split trainval_aug" in train["voc/lc_trainval_aug"]["shell"]
    assert all("--split" not in job["shell"] for run, job in train.items() if run != "voc/lc_trainval_aug")
    export = next(job for job in _jobs(result.stdout) if job["rule"] == "export_voc")
    assert "runs/voc/lc_trainval_aug/checkpoint.pt" in export["input"]


@pytest.mark.slow
def test_paper_gpu_jobs_through_the_slurm_profile(work, tmp_path):
    """Every job of a GPU kind asks SLURM for GPUs (--gpus), goes to the gpu partition (the plugin's
    choice from partitions.yaml) and runs with --device cuda; no other does."""
    import logging
    from types import SimpleNamespace

    try:  # the plugin's own partition and GRES code (internal modules; the lock pins the version)
        from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file
        from snakemake_executor_plugin_slurm.utils import set_gres_string
    except ImportError as error:
        from importlib.metadata import PackageNotFoundError, version
        try:
            installed = version("snakemake-executor-plugin-slurm")
        except PackageNotFoundError:
            installed = "(not installed)"
        pytest.skip(f"snakemake-executor-plugin-slurm {installed}: no partition/GRES helpers to call "
                    f"({error}); .ci/slurm_test.sh runs the profile on a real SLURM")

    class Resources(dict):
        __getattr__ = dict.get

    partitions = read_partition_file(REPO / "workflow/profiles/slurm/partitions.yaml")

    profile = tmp_path / "slurm"
    profile.mkdir()
    text = (REPO / "workflow/profiles/slurm/config.yaml").read_text()
    (profile / "config.yaml").write_text(text)  # the profile as shipped (no conda: jobs run this python)
    result = snakemake("-n", "--forceall", "--profile", str(profile), "reproduce_tables",
                       "--config", "preset=paper", cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    gpu_rules = {"recalibrate_bn", "train", "evaluate", "sweep", "export_cityscapes", "analyze_difficulty",
                 "analyze_stages",
                 "bench_op", "bench_models", "bench_stages", "bench_rho", "bench_table6"}
    jobs = _jobs(result.stdout)
    assert {job["rule"] for job in jobs} >= gpu_rules
    for job in jobs:
        resources = dict(item.split("=", 1) for item in job["resources"].split(", ") if "=" in item)
        numeric = Resources({k: int(v) for k, v in resources.items() if v.isdigit()})
        fake_job = SimpleNamespace(resources=numeric, threads=1, name=job["rule"], is_group=lambda: False)
        partition = get_best_partition(partitions, fake_job, logging.getLogger(__name__))
        assert partition == ("gpu" if "gpu" in resources else "cpu"), (job["rule"], resources)
        if job["rule"] in gpu_rules:
            sbatch = set_gres_string(SimpleNamespace(resources=SimpleNamespace(
                get=lambda key, default=None, r=resources: r.get(key, default), gres=None)))
            assert sbatch.strip() == f"--gpus={resources['gpu']}", (job["rule"], sbatch)
            assert "--device cuda" in job["shell"], job
        else:
            assert "gpu" not in resources and "--device cuda" not in job["shell"], job


@pytest.mark.slow
def test_demo_runs_on_the_configured_device(work):
    result = snakemake("-n", "-p", "--forceall", "reproduce_tables", "--config", "preset=demo", cwd=work)
    assert result.returncode == 0, result.stderr
    jobs = [job for job in _jobs(result.stdout) if "--device" in job["shell"]]
    assert jobs
    assert all("--device cuda" not in job["shell"] and "gpu=" not in job["resources"] for job in jobs)


@pytest.mark.slow
def test_test_preset_runs_end_to_end(tmp_path):
    """The whole DAG on the test preset in a copy of the repository; a second run does nothing."""
    work = copy_repo(tmp_path)
    result = snakemake("--cores", "2", "reproduce_tables", "--config", "preset=test", cwd=work, timeout=900)
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
    again = snakemake("-n", "--cores", "2", "reproduce_tables", "--config", "preset=test", cwd=work)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout
    # Snakemake's own report, no nested Snakemake: tables, figures, bench outputs, model info
    html = work / "results/test/report.html"
    report = snakemake("--report", str(html), "reproduce_tables", "--config", "preset=test", cwd=work)
    assert report.returncode == 0 and html.stat().st_size > 100_000, report.stderr[-3000:]
    text = html.read_text(errors="ignore")
    for name in ("fig7a_miou_vs_speed.png", "op_speedup.png", "model_info.csv", "table3_speed.csv"):
        assert name in text, name
