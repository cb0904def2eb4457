# Shared by all the workflow files: the resolved configuration, output paths (lc.report.outputs),
# the `lc` command line, exact params and resources per kind of job.
import json
import shlex

from lc.config import results_dir
from lc.data.paths import archive_path, prepared_dir, prepared_list_files, voc_test_available, weights_path
from lc.models.variants import CASCADE_VARIANTS, TABLE2_ORDER, VARIANTS, get_variant
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
LC = "python -m lc.cli"
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


# --- exact rerun tracking ---------------------------------------------------------------------
_MISSING = object()


def _lookup(cfg, dotted):
    value = cfg
    for part in dotted.split("."):
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            raise KeyError(f"workflow params: config key {dotted!r} does not exist")
    return value


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


LABEL_DIRS = {"voc": "SegmentationClassAug", "cityscapes": "gtFine"}


def label_dir(dataset):
    return str(prepared_dir(CFG, dataset) / LABEL_DIRS[dataset])


def prepared(dataset):
    """What a prepared data set is: its split lists and its label folder."""
    return [str(p) for p in prepared_list_files(CFG, dataset).values()] + [label_dir(dataset)]


# --- training runs ----------------------------------------------------------------------------
# A run folder runs/<dataset>/<run>: a variant (Table 2), `lc_rho<rho>` (one LC per rho of
# evaluate.rho_sweep when evaluate.sweep_retrain), or `lc_<split>` (the VOC test export's model
# when evaluate.export_train_split is not train_aug).
CASCADE_INIT = CFG["train"]["cascade_init"]
# Variants that start from train.cascade_init (the routed single-network cascades: lc, dsn_dropout).
FROM_CASCADE_INIT = [v.name for v in VARIANTS.values() if v.model_kind == "cascade" and v.routed]
TRAIN_RHO = float(CFG["train"]["rho"])
SWEEP_RETRAIN = bool(EV["sweep_retrain"])
RHO_SWEEP = [float(r) for r in EV["rho_sweep"]]
EXPORT_SPLIT = EV["export_train_split"]
DENSE_VARIANT = "dsn"  # LC at rho = 1 routes nothing: it is the DSN run (Table 1's first row)


def rho_run(rho):
    """The run whose LC model was trained at threshold rho (evaluate.sweep_retrain)."""
    rho = float(rho)
    if rho >= 1.0:
        return DENSE_VARIANT
    if abs(rho - TRAIN_RHO) < 1e-9:
        return "lc"
    return outputs.rho_run_name(rho)


def export_run(dataset):
    return "lc" if dataset != "voc" or EXPORT_SPLIT == TRAIN_SPLIT else outputs.split_run_name("lc", EXPORT_SPLIT)


def run_spec(run):
    """(variant, rho flag or None, split) of a run folder name."""
    if run in VARIANTS:
        return run, None, TRAIN_SPLIT
    if run.startswith("lc_rho"):
        return "lc", float(run[len("lc_rho"):]), TRAIN_SPLIT
    if run == outputs.split_run_name("lc", EXPORT_SPLIT):
        return "lc", None, EXPORT_SPLIT
    raise ValueError(f"unknown training run {run!r}")


def init_run(run):
    """The run a run starts from (None: ImageNet weights or scratch, see model.pretrained)."""
    variant = get_variant(run_spec(run)[0])
    if variant.init_from == "imagenet":
        return None
    return CASCADE_INIT if variant.name in FROM_CASCADE_INIT else variant.init_from


def pretrained_weights():
    """model.pretrained: `timm` -> the file rule `weights` writes; a path -> that file; null -> none."""
    source = CFG["model"]["pretrained"]
    if not source:
        return []
    return [str(weights_path(CFG))] if source == "timm" else [source]


def checkpoint(dataset, run):
    return out("checkpoint", dataset, run)


def train_reads(run):
    """The config keys `lc train` reads for one run (the budget of its variant only, etc.)."""
    variant = get_variant(run_spec(run)[0])
    model_keys = [k for k in CFG["model"] if variant.init_from == "imagenet" or k not in IMAGENET_KEYS]
    keys = ["seed", *(f"model.{k}" for k in model_keys),
            *(f"train.{k}" for k in TRAIN_RESULT_KEYS if k in CFG["train"]),
            f"train.iterations.{variant.budget_key}"]
    if variant.stage_losses:
        keys.append("train.stage_loss_weights")
    if variant.routed and run_spec(run)[1] is None:
        keys.append("train.rho")
    if variant.init_from == "imagenet":
        keys += [f"train.{k}" for k in ("pretrain_bn", "allow_scratch") if k in CFG["train"]]
    return keys


# model keys only pretraining reads (the others start from a checkpoint that already holds them)
IMAGENET_KEYS = {"pretrained", "pretrained_sha256", "timm_blocks"}
# train keys that change what every training run produces
TRAIN_RESULT_KEYS = ("crop_size", "batch_size", "optimizer", "lr", "head_lr_mult", "momentum", "weight_decay",
                     "poly_power", "scale_range", "amp")


# --- evaluation -------------------------------------------------------------------------------
def protocol_reads(protocol):
    """evaluate.* keys a test protocol reads (single scale / multi-scale (+ flip) / + dense CRF)."""
    keys = {"single": [], "ms": ["evaluate.scales", "evaluate.flip"]}.get(protocol)
    if keys is None:
        keys = protocol_reads("ms") + ["evaluate.crf"]
    return keys + [k for k in ("evaluate.fusion",) if "fusion" in EV and protocol != "single"]


def eval_tag(tag):
    """eval_<tag>.json -> (split, protocol): 'val_ms_crf' -> ('val', 'ms_crf')."""
    split, _, suffix = tag.partition("_")
    protocol = next(p for p, s in outputs.EVAL_PROTOCOLS.items() if s == (f"_{suffix}" if suffix else ""))
    return split, protocol


PROTOCOL_FLAGS = {"single": "", "ms": "--multi-scale", "ms_crf": "--multi-scale --crf"}


# --- helpers of the rule files (Snakemake's lint wants functions here) ----------------------

# train.smk
def _train_init(wc):
    parent = init_run(wc.run)
    return checkpoint(wc.dataset, parent) if parent else pretrained_weights()


# train.smk
def _train_flags(wc, input):
    variant, rho, split = run_spec(wc.run)
    flags = [f"--variant {variant}"]
    if rho is not None:
        flags.append(f"--rho {rho:g}")
    if split != TRAIN_SPLIT:
        flags.append(f"--split {split}")
    if init_run(wc.run):
        flags.append(f"--init {input.init}")
    return " ".join(flags)


# evaluate.smk
def sweep_pairs():
    """(rho, run) of Table 1: one LC per rho (evaluate.sweep_retrain) or the main LC at every rho."""
    return [(rho, rho_run(rho) if SWEEP_RETRAIN else "lc") for rho in RHO_SWEEP]


# benchmark.smk
def bench_settings(kind):
    keys = BENCH_READS[kind] + (BENCH_MODEL_READS if kind in BENCH_NEEDS_MODEL else [])
    paper = reads("model", cfg=PAPER_CFG) if kind in BENCH_NEEDS_MODEL else ""
    return reads(*keys) + paper


# benchmark.smk
def bench_outputs(kind):
    csv = out("bench", kind)
    if kind == "op":  # the op benchmark also plots its speedups
        return {"csv": csv, "png": report(out("bench", "op_plot"), caption="../report/bench_op.rst",
                                          category="Benchmarks", labels={"benchmark": "region conv op"})}
    return {"csv": report(csv, caption="../report/bench_csv.rst", category="Benchmarks",
                          labels={"benchmark": kind})}


# tables.smk
def eval_json(dataset, run, protocol="single"):
    return out("eval_json", dataset, run, "val", protocol)


# tables.smk
def table_inputs(number):
    """The run outputs table `number` reads (lc.report.tables); only what this preset produces."""
    voc = "voc" in DATASETS
    lc_protocols = [eval_json("voc", "lc", p) for p in outputs.EVAL_PROTOCOLS] if voc else []
    if number == 1:
        return [SWEEP_CSV] if voc else []
    if number == 2:
        return [f for v in TABLE2_ORDER for f in (eval_json("voc", v), out("train_done", "voc", v))] if voc else []
    if number == 3:
        return [out("bench", "models")] + ([eval_json("voc", "lc"), eval_json("voc", "irnet"), SWEEP_CSV] if voc else [])
    if number == 4:
        exports = [f"{R}/{outputs.VOC_TEST_ARCHIVE}", out("export_summary", outputs.VOC_TEST_ARCHIVE)] if VOC_TEST else []
        return lc_protocols + exports
    if number == 5:
        if "cityscapes" not in DATASETS:
            return []
        archive = outputs.CITYSCAPES_TEST_ARCHIVE
        return [eval_json("cityscapes", "lc"), f"{R}/{archive}", out("export_summary", archive)]
    return [out("bench", "table6"), out("bench", "models")] + lc_protocols


# figures.smk
def figure_input(rel):
    """A run's train_log.csv is stood for by its train_done.json (the log is complete once it exists)."""
    return f"{R}/{rel[: -len(_TRAIN_LOG)] + _TRAIN_DONE if rel.endswith(_TRAIN_LOG) else rel}"


# Snakefile
def write_resolved_config():
    """config.yaml with the command line's overrides applied to the base and to every preset, for the
    jobs' `lc --config` (they win over presets, as in lc.config.resolve_config; commands that read
    another preset, such as model-info's full-size comparison, still find it).

    Written when the workflow is parsed and only when its text changed; jobs declare it as an
    `ancient()` input, so which job reruns is decided by its exact params, not by this file's time.
    """
    import yaml

    raw = yaml.safe_load((Path(workflow.basedir) / "config.yaml").read_text())
    resolved = deep_merge(raw, _overrides)
    resolved["preset"] = PRESET
    resolved["presets"] = {name: deep_merge(block or {}, _overrides) for name, block in raw["presets"].items()}
    text = yaml.safe_dump(resolved, sort_keys=False)
    path = Path(RESOLVED_CONFIG)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

