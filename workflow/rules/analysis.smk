# Analyses behind Figures 1, 4 and 6: pixel difficulty of the baseline, stage-by-stage examples.


rule analyze_difficulty:
    """Easy / moderate / hard pixels per class of the single-loss IRNet, and the hard-pixel boundary share."""
    input:
        data=prepared("voc"),
        checkpoint=checkpoint_of("voc", "irnet"),
    output:
        table=f"{R}/analysis/difficulty_voc.csv",
        summary=f"{R}/analysis/difficulty_voc.json",
    params:
        lc_args=LC_ARGS,
        settings=section("evaluate"),
    log:
        f"{LOGS}/analysis/difficulty_voc.log",
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    conda:
        ENV_EVAL
    shell:
        "OMP_NUM_THREADS={threads} lc analyze difficulty {params.lc_args} --checkpoint {input.checkpoint}"
        " --dataset voc --split val --out {output.table} > {log} 2>&1"


rule analyze_stages:
    """Stage masks and predictions of LC on a few val images (Figs. 4 and 6)."""
    input:
        data=lambda wc: prepared(wc.dataset),
        checkpoint=f"{R}/runs/{{dataset}}/lc/checkpoint.pt",
    output:
        f"{R}/analysis/stage_examples_{{dataset}}.npz",
    params:
        lc_args=LC_ARGS,
        settings=section("evaluate"),
    log:
        f"{LOGS}/analysis/stage_examples_{{dataset}}.log",
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    conda:
        ENV_EVAL
    shell:
        "OMP_NUM_THREADS={threads} lc analyze stages {params.lc_args} --checkpoint {input.checkpoint}"
        " --dataset {wildcards.dataset} --split val --out {output} > {log} 2>&1"
