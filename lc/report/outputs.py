"""Every file a run writes, named once.

Paths are relative to results/<preset>/ (`results_dir(cfg)`); `OutputPaths(root)` prefixes them.
The Snakemake rules, the `lc` commands and the table and figure builders all take their paths from
here. Arguments may be Snakemake wildcards ("{dataset}"), so one function serves a rule's pattern
and a concrete file.
"""

from __future__ import annotations

from pathlib import Path

# eval_<split><suffix>.json by protocol; the protocol names are also the evaluate rule's wildcard.
EVAL_PROTOCOLS = {"single": "", "ms": "_ms", "ms_crf": "_ms_crf"}

TABLE_FILES = {
    1: "table1_rho_sweep.csv",
    2: "table2_ablation.csv",
    3: "table3_speed.csv",
    4: "table4_voc_per_class.csv",
    5: "table5_cityscapes_per_class.csv",
    6: "table6_sota.csv",
}
TABLES_MD = "tables/tables.md"

# bench/<kind>.csv, one per `lc bench` command
BENCH_FILES = {
    "op": "bench/op_speedup.csv",
    "op_plot": "bench/op_speedup.png",
    "models": "bench/table3_speed.csv",
    "stages": "bench/stage_time.csv",
    "rho": "bench/rho_speed.csv",
    "table6": "bench/table6_fps.csv",
}

RESOLVED_CONFIG = "config.resolved.yaml"
PROVENANCE = "provenance.json"
MODEL_INFO = "model_info.csv"

VOC_TEST_ARCHIVE = "export/voc_test_comp6.tar.gz"
CITYSCAPES_TEST_ARCHIVE = "export/cityscapes_test.zip"


def rho_tag(rho: float | str) -> str:
    """The folder tag of a per-rho model: 0.985 -> '0.985'."""
    return rho if isinstance(rho, str) and rho.startswith("{") else f"{float(rho):.3f}"


def run_dir(dataset: str, variant: str) -> str:
    return f"runs/{dataset}/{variant}"


def rho_run_name(rho: float | str) -> str:
    """The variant folder of the LC model trained at routing threshold rho (evaluate.sweep_retrain)."""
    return f"lc_rho{rho_tag(rho)}"


def split_run_name(variant: str, split: str) -> str:
    """The variant folder of a run trained on another split than train_aug (the VOC test export's model)."""
    return f"{variant}_{split}"


def checkpoint(dataset: str, variant: str) -> str:
    return f"{run_dir(dataset, variant)}/checkpoint.pt"


def bn_start(dataset: str) -> str:
    """The IRNet pretraining's start: ImageNet weights with BN recalibrated (`lc recalibrate-bn`)."""
    return f"runs/{dataset}/imagenet_bn/start.pt"


def train_done(dataset: str, variant: str) -> str:
    return f"{run_dir(dataset, variant)}/train_done.json"


def train_log(dataset: str, variant: str) -> str:
    return f"{run_dir(dataset, variant)}/train_log.csv"


def eval_json(dataset: str, variant: str, split: str = "val", protocol: str = "single") -> str:
    suffix = EVAL_PROTOCOLS.get(protocol, f"_{protocol}")
    return f"{run_dir(dataset, variant)}/eval_{split}{suffix}.json"


def eval_protocol(multi_scale: bool, crf: bool) -> str:
    if crf and not multi_scale:
        raise ValueError("the CRF protocol is evaluated on multi-scale predictions only")
    return "ms_crf" if crf else "ms" if multi_scale else "single"


def sweep_csv(dataset: str = "voc", split: str = "val") -> str:
    return f"{run_dir(dataset, 'lc')}/sweep_{split}.csv"


def bench(kind: str) -> str:
    return BENCH_FILES[kind]


def table(number: int) -> str:
    return f"tables/{TABLE_FILES[number]}"


def figure(name: str, ext: str = "png") -> str:
    return f"figures/{name}.{ext}"


def difficulty(ext: str) -> str:
    return f"analysis/difficulty_voc.{ext}"


def stage_examples(dataset: str) -> str:
    return f"analysis/stage_examples_{dataset}.npz"


def export_summary(archive: str) -> str:
    """export/<name>.json beside export/<name>.<ext>: image counts of the submission."""
    folder, _, name = archive.rpartition("/")  # the file name's stem only (as lc export writes it)
    return f"{folder}/{name.split('.')[0]}.json" if folder else f"{name.split('.')[0]}.json"


def benchmark(kind: str, name: str) -> str:
    """Snakemake's `benchmark:` record (wall time, memory) of a long job."""
    return f"benchmarks/{kind}/{name}.tsv"


def log(kind: str, name: str) -> str:
    return f"logs/{kind}/{name}.log"


class OutputPaths:
    """The same names below one results folder: `OutputPaths(results_dir(cfg)).checkpoint("voc", "lc")`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __getattr__(self, name: str):
        relative = globals().get(name)
        if not callable(relative) or name.startswith("_") or name in ("OutputPaths", "Path"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.root / relative(*args, **kwargs)

    def file(self, relative: str) -> Path:
        return self.root / relative


# "LC across backbones" (`snakemake backbones`): per backbone and data set, its runs (IRNet: the main
# runs above), its sweeps and its benchmark; one table and one figure for all of them.
BACKBONES_TABLE = "tables/backbones.csv"
BACKBONES_MD = "tables/backbones.md"
BACKBONES_FIGURE = "backbones_miou_speedup"  # figures/<name>.png and .pdf
BACKBONE_KINDS = ("sweep_dense", "sweep_lc", "bench")  # dense and LC on the val split; lc bench backbone


def backbone_dir(backbone: str, dataset: str) -> str:
    return f"backbones/{backbone}/{dataset}"


def backbone_file(backbone: str, dataset: str, kind: str) -> str:
    """<kind>.csv (BACKBONE_KINDS; a wildcard also works) of one backbone on one data set."""
    return f"{backbone_dir(backbone, dataset)}/{kind}.csv"


def backbone_checkpoint(backbone: str, dataset: str, variant: str) -> str:
    """A backbone's run; IRNet's are the main runs (runs/<dataset>/<variant>/)."""
    if backbone == "irnet":
        return checkpoint(dataset, variant)
    return f"{backbone_dir(backbone, dataset)}/{variant}/checkpoint.pt"
