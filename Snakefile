"""Layer Cascade (CVPR 2017) reproduction: data -> training -> evaluation -> benchmarks -> tables.

    snakemake --profile workflow/profiles/local reproduce_tables                # demo preset (CPU)
    snakemake --profile workflow/profiles/local reproduce_tables --config preset=paper
    snakemake --profile workflow/profiles/slurm reproduce_tables --config preset=paper
    snakemake --report results/demo/report.html                                   # after a run

config.yaml is read through lc.config (base merged with the chosen preset; `--config` values
override both) and validated against the schema shipped with the package (lc/config.schema.yaml).
"""

import sys
from pathlib import Path

from snakemake.utils import min_version, validate

# The workflow's own folder first: the rules and the Snakefile use the `lc` beside them.
sys.path.insert(0, workflow.basedir)

from lc.config import (  # noqa: E402
    SCHEMA_PATH,
    check_startup,
    load_config,
    read_raw_config,
    write_resolved_config,
)

min_version("8.0")


report: "workflow/report/workflow.rst"


# Without a `configfile:` directive `config` holds only the command line's --config/--configfile
# values: the preset to use and overrides applied on top of it.
_overrides = {k: v for k, v in config.items() if k != "preset"}
for _configfile in getattr(workflow, "configfiles", []):
    read_raw_config(_configfile)  # Snakemake's loader keeps a duplicate key's last value; ours refuses it
CFG = load_config(Path(workflow.basedir) / "config.yaml", preset=config.get("preset"), overrides=_overrides)
validate(CFG, schema=str(SCHEMA_PATH))
check_startup(CFG)  # what every `lc` command checks too
config.clear()
config.update(CFG)


include: "workflow/rules/common.smk"
include: "workflow/rules/runs.smk"


# config.yaml with the command line's overrides applied to the base and to every preset
# (lc.config.resolved_config_text), for every job's `lc --config`. Written when the workflow is
# parsed and only when its text changed; jobs declare it `ancient()`, so reruns follow exact params.
# A dry-run (-n) writes nothing: then rule `resolved_config` stands in for a missing file.
DRY_RUN = bool(getattr(getattr(workflow, "output_settings", None), "dryrun", False))
if not DRY_RUN:
    write_resolved_config(Path(workflow.basedir) / "config.yaml", PRESET, _overrides, RESOLVED_CONFIG)
elif not Path(RESOLVED_CONFIG).exists():

    rule resolved_config:
        """Dry-run only: the file a real run writes while parsing the workflow (listed, not written)."""
        output:
            RESOLVED_CONFIG,
        localrule: True
        run:
            write_resolved_config(Path(workflow.basedir) / "config.yaml", PRESET, _overrides, output[0])


wildcard_constraints:
    dataset="voc|cityscapes",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/backbones.smk"  # `snakemake backbones` (not in reproduce_tables)


# Small jobs run beside Snakemake itself, never on the queue; downloads need the login node's network.
localrules:
    reproduce_tables,
    figures,
    download,
    weights,
    synth,
    tables_markdown,
    model_info,
    provenance,  # (table and figure rules: `localrule: True` in their loops)


rule reproduce_tables:
    """Everything: all six tables (+ tables.md), all figures and the provenance record."""
    input:
        TABLE_OUTPUTS,
        TABLES_MD,
        FIGURE_OUTPUTS,
        rules.provenance.output,
    default_target: True
