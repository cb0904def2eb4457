"""Rerun tracking as wide as each job's reads (issue 13, item 7).

On a copy of the repository, every demo job is recorded as done (empty outputs, `snakemake --touch`).
Then user-facing config keys are changed one at a time (cumulatively, so each step's difference is one
key) and `snakemake --touch --rerun-triggers params` records the jobs whose params changed: exactly
the jobs whose command reads that key (provenance records the whole configuration, so it is in every set).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from helpers import copy_repo, snakemake

from lc.config import deep_merge

pytestmark = pytest.mark.slow
TARGET = ["reproduce_tables", "--config", "preset=demo"]
TRAIN_ALL = {f"train:{run}" for run in ("voc/irnet", "voc/dsn", "voc/dsn_budget", "voc/dsn_dropout", "voc/mc",
                                         "voc/lc", "cityscapes/irnet", "cityscapes/dsn", "cityscapes/lc")}
EVAL_ALL = {f"evaluate:{name}" for name in (
    "voc/irnet/eval_val", "voc/dsn/eval_val", "voc/dsn_budget/eval_val", "voc/dsn_dropout/eval_val",
    "voc/mc/eval_val", "voc/lc/eval_val", "voc/lc/eval_val_ms", "voc/lc/eval_val_ms_crf",
    "cityscapes/lc/eval_val")}
# key -> new value, and the jobs that read it (from the commands' code, not from the workflow)
CHANGES = [
    ("evaluate.fast_rho", 0.9, {"bench_models", "bench_stages", "model_info", "build_table3"}),
    ("evaluate.rho_sweep", [1.0, 0.9], {"sweep", "bench_rho", "build_table1"}),
    ("evaluate.scales", [1.0, 1.5], {"evaluate:voc/lc/eval_val_ms", "evaluate:voc/lc/eval_val_ms_crf",
                                     "export_voc", "bench_table6"}),
    ("evaluate.max_images", 3, EVAL_ALL | {"sweep", "analyze_difficulty"}),
    ("evaluate.difficulty.confidence", 0.9, {"analyze_difficulty", "figure_fig1_difficulty"}),
    ("train.iterations.mc", 7, {"train:voc/mc"}),
    ("train.lr", 0.02, TRAIN_ALL),
    ("train.workers", 3, set()),  # execution only: reruns nothing
    ("train.loss_normalization", "image", {f"train:{run}" for run in (  # the variants with stage losses
        "voc/dsn", "voc/dsn_budget", "voc/dsn_dropout", "voc/mc", "voc/lc", "cityscapes/dsn",
        "cityscapes/lc")}),
    ("train.rho", 0.95, {"train:voc/lc", "train:voc/dsn_dropout", "train:voc/mc", "train:cityscapes/lc",
                         "build_table1"}),
    ("train.pretrain_bn", "frozen", {"train:voc/irnet", "train:cityscapes/irnet"}),
    ("bench.runs", 4, {"bench_op", "bench_models", "bench_stages", "bench_rho", "bench_table6"}),
    # region stages: routed cascade training, LC's evaluations, the sweep, the exports, every benchmark
    ("region.cuda_graphs", False, {"train:voc/lc", "train:voc/dsn_dropout", "train:cityscapes/lc",
                                   "evaluate:voc/lc/eval_val", "evaluate:voc/lc/eval_val_ms",
                                   "evaluate:voc/lc/eval_val_ms_crf", "evaluate:cityscapes/lc/eval_val",
                                   "sweep", "export_voc", "export_cityscapes", "bench_op", "bench_models",
                                   "bench_stages", "bench_rho", "bench_table6"}),
]


def _run(args: list[str], cwd: Path) -> str:
    result = snakemake(*TARGET, *args, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _label(path: Path, rule: str) -> str:
    if rule == "train":
        return f"train:{path.parts[-3]}/{path.parts[-2]}"
    if rule == "evaluate":
        return f"evaluate:{path.parts[-3]}/{path.parts[-2]}/{path.stem}"
    return rule


def _recorded_params(work: Path) -> dict[str, list]:
    """job label -> its params as Snakemake recorded them (.snakemake/metadata, one file per output)."""
    recorded = {}
    for meta in (work / ".snakemake/metadata").iterdir():
        data = json.loads(meta.read_text())
        path = Path(base64.b64decode(meta.name.replace("@", "/")).decode())
        recorded[_label(path, data["rule"])] = data["params"]
    return recorded


@pytest.fixture(scope="module")
def touched_demo(tmp_path_factory) -> Path:
    work = copy_repo(tmp_path_factory.mktemp("params"))
    dry = _run(["-n", "--forceall"], work)
    outputs = [p.strip() for line in dry.splitlines() if line.startswith("    output: ")
               for p in line[len("    output: "):].split(",")]
    for out in outputs:
        path = work / out
        if path.name in ("SegmentationClassAug", "gtFine") or path.parent.name == "raw":  # folders
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    _run(["--touch", "--forceall", "--cores", "1"], work)
    return work


def test_each_key_reruns_exactly_the_jobs_that_read_it(touched_demo):
    work, overrides = touched_demo, {}
    before = _recorded_params(work)
    assert "train:voc/mc" in before and "bench_models" in before
    for key, value, readers in CHANGES:
        nested = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        overrides = deep_merge(overrides, nested)
        (work / "override.yaml").write_text(yaml.safe_dump(overrides))
        _run(["--touch", "--cores", "1", "--rerun-triggers", "params", "--configfile", "override.yaml"], work)
        after = _recorded_params(work)
        changed = {job for job, params in after.items() if params != before.get(job)}
        assert changed == readers | {"provenance"}, (key, sorted(changed ^ (readers | {"provenance"})))
        before = after
