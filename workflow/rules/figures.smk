# The paper's figures, rebuilt from this run (PNG for the report, PDF for papers).
from lc.report.figures import FIGURE_INPUTS as _FIGURE_FILES

FIGURE_DATASETS = {"fig6_stages_cityscapes": "cityscapes"}  # every other figure is VOC's
# Figs. 4 and 6 name the device of the LC evaluation in their subtitle.
FIGURE_EXTRA_INPUTS = {"fig4_stages_voc": [eval_json("voc", "lc")],
                       "fig6_stages_cityscapes": [eval_json("cityscapes", "lc")]}


FIGURE_INPUTS = {
    name: [path for rel in files for path in figure_input(rel)] + FIGURE_EXTRA_INPUTS.get(name, [])
    for name, files in _FIGURE_FILES.items()
    if FIGURE_DATASETS.get(name, "voc") in DATASETS
}
# The config keys each figure reads besides the run's outputs (lc.report.figures).
FIGURE_READS = {"fig1_difficulty": ["evaluate.difficulty"]}
FIGURE_OUTPUTS = [out("figure", name, ext) for name in FIGURE_INPUTS for ext in ("png", "pdf")]

for _figure, _inputs in FIGURE_INPUTS.items():

    rule:
        name:
            f"figure_{_figure}"
        input:
            config=ancient(RESOLVED_CONFIG),
            results=_inputs,
        output:
            png=report(
                out("figure", _figure, "png"),
                caption=f"../report/{_figure}.rst",
                category="Figures",
                labels={"figure": _figure},
            ),
            pdf=out("figure", _figure, "pdf"),
        params:
            lc=LC,
            lc_args=LC_ARGS,
            figure=_figure,
            settings=reads(*FIGURE_READS.get(_figure, [])),
            out_dir=lambda wc, output: str(Path(output[0]).parent),
        log:
            log("figures", _figure),
        localrule: True
        threads: threads_for("report")
        resources:
            **resources_for("report"),
        conda:
            ENV_CPU
        shell:
            "{params.lc} figures {params.lc_args} --out-dir {params.out_dir} --figure {params.figure} > {log} 2>&1"


rule figures:
    """Target: all figures."""
    input:
        FIGURE_OUTPUTS,
