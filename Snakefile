"""Layer Cascade (CVPR 2017) reproduction: data -> training -> evaluation -> benchmarks -> tables.

    snakemake --cores all reproduce_tables                       # demo preset (synthetic, CPU)
    snakemake --cores all reproduce_tables --config preset=paper  # the real experiments
    snakemake --profile workflow/profiles/slurm reproduce_tables --config preset=paper

config.yaml is read through lc.config (base merged with the chosen preset; `--config` values
override both) and validated against the schema shipped with the package (lc/config.schema.yaml).
"""

from pathlib import Path

from snakemake.utils import min_version, validate

from lc.config import SCHEMA_PATH, check_startup, load_config, write_resolved_config

min_version("8.0")


report: "workflow/report/workflow.rst"

# Without a `configfile:` directive `config` holds only the command line's --config/--configfile
# values: the preset to use and overrides applied on top of it.
_overrides = {k: v for k, v in config.items() if k != "preset"}
CFG = load_config("config.yaml", preset=config.get("preset"), overrides=_overrides)
validate(CFG, schema=str(SCHEMA_PATH))
check_startup(CFG)  # what every `lc` command checks too
config.clear()
config.update(CFG)


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset="voc|cityscapes",
    variant="|".join(VOC_VARIANTS),
    split="train|val",
    rho=r"[0-9.]+",


onstart:
    # config.yaml with the command line's overrides applied to the base and to every preset
    # (lc.config.resolved_config_text); every job reads it. Written only when it changed, so its
    # timestamp never makes anything look outdated.
    write_resolved_config("config.yaml", PRESET, _overrides, RESOLVED_CONFIG)


include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sweep.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


localrules:
    reproduce_tables,
    table1,
    table2,
    table3,
    table4,
    table5,
    table6,
    figures,
    download,
    report,


rule reproduce_tables:
    """Everything: all six tables (+ tables.md), all figures and the provenance record."""
    input:
        TABLE_OUTPUTS,
        f"{R}/tables/tables.md",
        FIGURE_OUTPUTS,
        f"{R}/provenance.json",
    default_target: True
