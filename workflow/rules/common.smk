# Shared by all the workflow files: the resolved configuration, output paths (lc.report.outputs),
# the `lc` command line, exact params and resources per kind of job.
import json
import shlex

from lc.config import load_config, lookup, results_dir
from lc.data.paths import (archive_path, extracted_dir, prepared_dir, prepared_list_files, voc_test_available,
                           weights_path)
from lc.data.weights import WEIGHTS_FILENAME
from lc.models.variants import TABLE2_ORDER, VARIANTS, get_variant
from lc.report import outputs

PRESET = CFG["preset"]
R = str(results_dir(CFG))  # results/<preset>
DATA = CFG["data"]["root"]
DATASETS = CFG["datasets"]
SYNTHETIC = bool(CFG["data"]["synthetic"])
VOC_TEST = voc_test_available(CFG)
RES = CFG["resources"]
GPUS = RES["gpus"]
EV = CFG["evaluate"]
TRAIN_SPLIT = "train_aug"  # what every run trains on, except the VOC test export's model


def out(name, *args, **kwargs):
    """A path of lc.report.outputs below results/<preset>/ (a function name, or a constant's name)."""
    value = getattr(outputs, name)
    return f"{R}/{value(*args, **kwargs) if callable(value) else value}"


def log(kind, name):
    return out("log", kind, name)


# --- the `lc` command -------------------------------------------------------------------------
# Jobs run `python -m lc.cli` with the workflow's own folder first on PYTHONPATH: the conda envs
# (envs/) hold the dependencies only, and a checkout runs without `pip install -e .`.
REPO = str(Path(workflow.basedir).resolve())
shell.prefix(f"set -euo pipefail; export PYTHONPATH={shlex.quote(REPO)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")
LC = f"{shlex.quote(sys.executable)} -m lc.cli"  # the interpreter that runs Snakemake
# Every `lc` call reads config.yaml with the command line's --config overrides applied (written
# below), so `snakemake --config evaluate='{max_images: 10}'` reaches the jobs.
RESOLVED_CONFIG = out("RESOLVED_CONFIG")
LC_ARGS = f"--config {RESOLVED_CONFIG} --preset {PRESET}"


def launcher(kind):
    """`lc` for one process; torchrun with one process per GPU when a training job has several."""
    if GPUS.get(kind, 0) > 1:
        return f"torchrun --standalone --nproc_per_node {GPUS[kind]} -m lc.cli"
    return LC


def device_flag(kind):
    """A job that asks for GPUs runs on CUDA or fails (never falls back to the CPU silently)."""
    return "cuda" if GPUS.get(kind, 0) > 0 else CFG["device"]


# "Full size" = the paper preset's model (benchmarks, model-info), with the same overrides.
PAPER_CFG = CFG if PRESET == "paper" else load_config(
    Path(workflow.basedir) / "config.yaml", preset="paper", overrides=_overrides)


# --- exact rerun tracking ---------------------------------------------------------------------
def _lookup(cfg, dotted):
    try:
        return lookup(cfg, dotted)
    except (KeyError, TypeError, ValueError, IndexError):
        raise KeyError(f"workflow params: config key {dotted!r} does not exist") from None


def reads(*keys, cfg=None):
    """The config values a command reads, as canonical JSON: a rule's `settings` param.

    Snakemake reruns a job when its params change (rerun trigger `params`), so each rule lists
    exactly the keys its command reads: a key reruns the jobs that read it and nothing else.
    Execution-only settings (workers, log_every, checkpoint_every, resources) are left out.
    """
    cfg = CFG if cfg is None else cfg
    return json.dumps({key: _lookup(cfg, key) for key in keys}, sort_keys=True)


def resources_for(kind):
    """Scheduler resources of one kind of job (config.yaml `resources:`); `gpu` is what the SLURM
    plugin turns into --gpus and the default profile caps at one job at a time."""
    res = {"mem_mb": RES["mem_mb"].get(kind, 4000), "runtime": RES["runtime_min"].get(kind, 60)}
    if GPUS.get(kind, 0) > 0:
        res["gpu"] = GPUS[kind]
    return res


def threads_for(kind):
    return RES["threads"].get(kind, 1)


# One conda env per kind of job; compute jobs get the CUDA build when the preset asks for GPUs.
ENV_CPU = "../../envs/lc-cpu.yaml"


def env_for(kind):
    return "../../envs/lc-gpu.yaml" if GPUS.get(kind, 0) > 0 else ENV_CPU


# --- data -------------------------------------------------------------------------------------
def archive(key):
    return str(archive_path(CFG, key))


# the archives `lc prepare <dataset>` extracts
PREPARE_ARCHIVES = {
    "voc": ["voc2012_trainval", "sbd"] + (["voc2012_test"] if VOC_TEST else []),
    "cityscapes": ["cityscapes_gtfine", "cityscapes_leftimg8bit"],
}
LABEL_DIRS = {"voc": "SegmentationClassAug", "cityscapes": "gtFine"}


def label_dir(dataset):
    return str(prepared_dir(CFG, dataset) / LABEL_DIRS[dataset])


def extracted_dirs(dataset):
    return [str(extracted_dir(CFG, key)) for key in PREPARE_ARCHIVES[dataset]]


def prepared(dataset):
    """What a prepared data set is: its split lists, its label folder and its extracted images."""
    return [str(p) for p in prepared_list_files(CFG, dataset).values()] + [label_dir(dataset)] + extracted_dirs(
        dataset)


# --- the configuration the jobs read ------------------------------------------------------
