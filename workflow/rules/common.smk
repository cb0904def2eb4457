# Shared by every rule file: the resolved configuration, paths, and the `lc` command line.
import json

from lc.config import config_hash, results_dir
from lc.data.paths import archive_path, prepared_list_files, voc_test_available

PRESET = CFG["preset"]
R = str(results_dir(CFG))  # results/<preset>
DATA = CFG["data"]["root"]
LOGS = f"{R}/logs"
# Every `lc` call reads the configuration Snakemake resolved (base + preset + --config overrides),
# written by `onstart` below, so `snakemake --config evaluate='{max_images: 10}'` reaches the jobs.
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

wildcard_constraints:
    dataset="voc|cityscapes",
    variant="|".join(VOC_VARIANTS),
    split="train|val",
    rho=r"[0-9.]+",


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


onstart:
    # Written only when it changed, so its timestamp never makes anything look outdated.
    import yaml

    resolved = dict(CFG, presets={PRESET: {}})
    text = yaml.safe_dump(resolved, sort_keys=False)
    path = Path(RESOLVED_CONFIG)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
