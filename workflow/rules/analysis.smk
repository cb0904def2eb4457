# Analyses behind Figures 1, 4 and 6: pixel difficulty of the baseline, stage-by-stage examples.


rule analyze_difficulty:
    """Easy / moderate / hard pixels per class of the single-loss IRNet, and the hard-pixel boundary share."""
    input:
        config=ancient(RESOLVED_CONFIG),
        data=prepared("voc"),
        checkpoint=checkpoint("voc", "irnet"),
    output:
        table=out("difficulty", "csv"),
        summary=out("difficulty", "json"),
    params:
        lc=LC,
        lc_args=LC_ARGS,
        device=device_flag("evaluate"),
        settings=reads("evaluate.difficulty", "evaluate.max_images"),
    log:
        log("analysis", "difficulty_voc"),
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    conda:
        env_for("evaluate")
    shell:
        "OMP_NUM_THREADS={threads} {params.lc} analyze difficulty {params.lc_args} --checkpoint {input.checkpoint}"
        " --dataset voc --split val --device {params.device} --out {output.table}"
        " --out-json {output.summary} > {log} 2>&1"


rule analyze_stages:
    """Stage masks and predictions of LC on a few val images (Figs. 4 and 6)."""
    input:
        config=ancient(RESOLVED_CONFIG),
        data=lambda wc: prepared(wc.dataset),
        checkpoint=checkpoint("{dataset}", "lc"),
    output:
        out("stage_examples", "{dataset}"),
    params:
        lc=LC,
        lc_args=LC_ARGS,
        device=device_flag("evaluate"),
    log:
        log("analysis", "stage_examples_{dataset}"),
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    conda:
        env_for("evaluate")
    shell:
        "OMP_NUM_THREADS={threads} {params.lc} analyze stages {params.lc_args} --checkpoint {input.checkpoint}"
        " --dataset {wildcards.dataset} --split val --device {params.device} --out {output} > {log} 2>&1"
