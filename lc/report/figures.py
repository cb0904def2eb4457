"""The paper's figures (1, 4, 5a, 5b, 6, 7a, 7b) and the training curves, rebuilt from a run's outputs.

Each figure reads the files named in FIGURE_INPUTS (lc.report.outputs names, relative to
results/<preset>/); its title names the preset and the device the numbers were made on. Published
numbers come from lc.report.paper only and are labelled as published. The builders live by family:
figures_accuracy (1, 5), figures_stages (4, 6), figures_speed (7), figures_training (curves).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lc.report import outputs
from lc.report.figure_common import pyplot, save
from lc.report.figures_accuracy import fig1_difficulty, fig5a_label_distribution, fig5b_stage_share
from lc.report.figures_speed import fig7a_miou_vs_speed, fig7b_stage_time
from lc.report.figures_stages import fig4_stages_voc, fig6_stages_cityscapes
from lc.report.figures_training import train_curves, train_logs

# figure name -> files it reads (relative to results/<preset>/). A name with wildcards ({dataset},
# {variant}) stands for every run that has it: the workflow expands it over the runs it trains.
FIGURE_INPUTS: dict[str, tuple[str, ...]] = {
    "fig1_difficulty": (outputs.difficulty("csv"), outputs.difficulty("json")),
    "fig4_stages_voc": (outputs.stage_examples("voc"), outputs.eval_json("voc", "lc")),
    "fig5a_label_distribution": (outputs.eval_json("voc", "lc"),),
    "fig5b_stage_share": (outputs.sweep_csv(),),
    "fig6_stages_cityscapes": (outputs.stage_examples("cityscapes"), outputs.eval_json("cityscapes", "lc")),
    "fig7a_miou_vs_speed": (outputs.sweep_csv(), outputs.bench("rho")),
    "fig7b_stage_time": (outputs.bench("stages"),),
    "train_curves": (outputs.train_log("{dataset}", "{variant}"),),
}
FIGURES = tuple(FIGURE_INPUTS)

BUILDERS: dict[str, Callable] = {
    "fig1_difficulty": fig1_difficulty, "fig4_stages_voc": fig4_stages_voc,
    "fig5a_label_distribution": fig5a_label_distribution, "fig5b_stage_share": fig5b_stage_share,
    "fig6_stages_cityscapes": fig6_stages_cityscapes, "fig7a_miou_vs_speed": fig7a_miou_vs_speed,
    "fig7b_stage_time": fig7b_stage_time, "train_curves": train_curves,
}


def missing_inputs(name: str, results: str | Path) -> list[Path]:
    """The input files of figure `name` that do not exist under results/<preset>/.

    A wildcard input (train_curves) is missing only when no run has the file.
    """
    results = Path(results)
    missing = []
    for rel in FIGURE_INPUTS[name]:
        if "{" in rel:
            if not train_logs(results):
                missing.append(results / rel)
        elif not (results / rel).exists():
            missing.append(results / rel)
    return missing


def make_figure(name: str, cfg: dict, results: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw figure `name` from the run under `results`; returns the PNG and PDF paths."""
    if name not in BUILDERS:
        raise ValueError(f"unknown figure {name!r}; expected one of {FIGURES}")
    missing = missing_inputs(name, results)
    if missing:
        raise FileNotFoundError(f"{name} needs {', '.join(map(str, missing))}; "
                                f"run `snakemake --cores all figures --config preset={cfg['preset']}`")
    plt = pyplot()
    fig = BUILDERS[name](Path(results), cfg, plt)
    try:
        return save(fig, Path(out_dir), name)
    finally:
        plt.close(fig)
