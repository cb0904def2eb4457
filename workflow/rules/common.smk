# Shared by all the workflow files: the resolved configuration, paths, the `lc` command line.
import json

from lc.config import config_hash, results_dir
from lc.data.paths import archive_path, prepared_list_files, voc_test_available

PRESET = CFG["preset"]
R = str(results_dir(CFG))  # results/<preset>
DATA = CFG["data"]["root"]
LOGS = f"{R}/logs"
# Every `lc` call reads config.yaml with the command line's --config overrides applied (written
# by `onstart` in the Snakefile), so `snakemake --config evaluate='{max_images: 10}'` reaches the jobs.
RESOLVED_CONFIG = f"{R}/config.resolved.yaml"
LC_ARGS = f"--config {RESOLVED_CONFIG} --preset {PRESET}"

DATASETS = CFG["datasets"]
VOC_VARIANTS = ["irnet", "dsn", "dsn_dropout", "mc", "lc"]
CASCADE_VARIANTS = ["dsn", "dsn_dropout", "lc", "mc"]
SYNTHETIC = bool(CFG["data"]["synthetic"])
VOC_TEST = voc_test_available(CFG)
RHO_SWEEP = [float(r) for r in CFG["evaluate"]["rho_sweep"]]
SWEEP_RETRAIN = bool(CFG["evaluate"]["sweep_retrain"])
RES = CFG["resources"]
GPUS = RES["gpus"]

# One conda env per kind of job; compute jobs get the CUDA build when the preset asks for GPUs.
ENV_CPU = "../../envs/lc-cpu.yaml"
ENV_TRAIN = "../../envs/lc-gpu.yaml" if GPUS["train"] else ENV_CPU
ENV_EVAL = "../../envs/lc-gpu.yaml" if GPUS["evaluate"] else ENV_CPU
ENV_BENCH = "../../envs/lc-gpu.yaml" if GPUS["bench"] else ENV_CPU

def resources_for(kind):
    """Scheduler resources of one kind of job (see config.yaml `resources:`)."""
    res = {"mem_mb": RES["mem_mb"].get(kind, 4000), "runtime": RES["runtime_min"].get(kind, 60)}
    if kind in GPUS:
        res["gpu"] = GPUS[kind]
    return res


def threads_for(kind):
    return RES["threads"].get(kind, 1)


def section(*keys):
    """A config subsection as canonical JSON: used as a `params:` value so changing it reruns the rule."""
    return json.dumps({k: CFG[k] for k in keys}, sort_keys=True)


def rho_tag(rho):
    return f"{float(rho):.3f}"


def archive(key):
    return str(archive_path(CFG, key))


def prepared(dataset):
    return [str(p) for p in prepared_list_files(CFG, dataset).values()]


def checkpoint_of(dataset, variant):
    return f"{R}/runs/{dataset}/{variant}/checkpoint.pt"


def train_launcher(gpus):
    """`lc` for one process, torchrun with one process per GPU when a job has several."""
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node {gpus} -m lc.cli"
    return "lc"


def export_summary(archive):
    """export/<name>.json beside export/<name>.<ext>: image counts of the submission."""
    return archive.split(".")[0] + ".json"


def sweep_checkpoints(wildcards):
    if SWEEP_RETRAIN:
        return [f"{R}/runs/voc/lc_rho{rho_tag(rho)}/checkpoint.pt" for rho in RHO_SWEEP]
    return [checkpoint_of("voc", "lc")]


def eval_json(dataset, variant, protocol=""):
    return f"{R}/runs/{dataset}/{variant}/eval_val{protocol}.json"


def table_inputs(number):
    """The run outputs table `number` reads (lc.report.tables); only what this preset produces."""
    voc = "voc" in DATASETS
    if number == 1:
        return [SWEEP_CSV] if voc else []
    if number == 2:
        return [eval_json("voc", v) for v in VOC_VARIANTS] if voc else []
    if number == 3:
        return [BENCH_OUTPUTS["models"]] + (
            [eval_json("voc", "lc"), eval_json("voc", "irnet"), SWEEP_CSV] if voc else [])
    if number == 4:
        if not voc:
            return []
        exports = [f"{R}/export/voc_test_comp6.tar.gz"] if VOC_TEST else []
        return [eval_json("voc", "lc", p) for p in ("", "_ms", "_ms_crf")] + exports
    if number == 5:
        if "cityscapes" not in DATASETS:
            return []
        return [eval_json("cityscapes", "lc"), f"{R}/export/cityscapes_test.zip"]
    return [BENCH_OUTPUTS["table6"], BENCH_OUTPUTS["models"]] + (
        [eval_json("voc", "lc", p) for p in ("", "_ms", "_ms_crf")] if voc else [])
