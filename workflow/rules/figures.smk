# The paper's figures, rebuilt from this run (PNG for the report, PDF for papers).

FIGURE_INPUTS = {
    "fig1_difficulty": [f"{R}/analysis/difficulty_voc.csv", f"{R}/analysis/difficulty_voc.json"],
    "fig4_stages_voc": [f"{R}/analysis/stage_examples_voc.npz"],
    "fig5a_label_distribution": [eval_json("voc", "lc")],
    "fig5b_stage_share": [SWEEP_CSV],
    "fig6_stages_cityscapes": [f"{R}/analysis/stage_examples_cityscapes.npz"],
    "fig7a_miou_vs_speed": [SWEEP_CSV, BENCH_OUTPUTS["rho"]],
    "fig7b_stage_time": [BENCH_OUTPUTS["stages"]],
}
if "cityscapes" not in DATASETS:
    del FIGURE_INPUTS["fig6_stages_cityscapes"]
if "voc" not in DATASETS:
    for _figure in ("fig1_difficulty", "fig4_stages_voc", "fig5a_label_distribution", "fig5b_stage_share",
                    "fig7a_miou_vs_speed", "fig7b_stage_time"):
        del FIGURE_INPUTS[_figure]
FIGURE_OUTPUTS = [f"{R}/figures/{name}.{ext}" for name in FIGURE_INPUTS for ext in ("png", "pdf")]

for _figure, _inputs in FIGURE_INPUTS.items():

    rule:
        name:
            f"figure_{_figure}"
        input:
            _inputs,
        output:
            png=report(
                f"{R}/figures/{_figure}.png",
                caption=f"../report/{_figure}.rst",
                category="Figures",
                labels={"figure": _figure},
            ),
            pdf=f"{R}/figures/{_figure}.pdf",
        params:
            lc_args=LC_ARGS,
            figure=_figure,
            out_dir=lambda wc, output: str(Path(output[0]).parent),
        log:
            f"{LOGS}/figures/{_figure}.log",
        threads: threads_for("report")
        resources:
            **resources_for("report"),
        conda:
            ENV_CPU
        shell:
            "lc figures {params.lc_args} --out-dir {params.out_dir} --figure {params.figure} > {log} 2>&1"


rule figures:
    """Target: all figures."""
    input:
        FIGURE_OUTPUTS,
