# Table 1: the rho sweep on VOC val. By default one LC model re-thresholded at every rho; with
# evaluate.sweep_retrain one LC model per rho (rule train_rho), each evaluated at its own rho.


rule sweep:
    """% of pixels decided at each stage and mIoU for every rho of evaluate.rho_sweep."""
    input:
        data=prepared("voc"),
        checkpoints=sweep_checkpoints,
    output:
        f"{R}/runs/voc/lc/sweep_val.csv",
    params:
        lc_args=LC_ARGS,
        settings=section("evaluate"),
    log:
        f"{LOGS}/evaluate/sweep_voc_val.log",
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    conda:
        ENV_EVAL
    shell:
        "OMP_NUM_THREADS={threads} lc sweep {params.lc_args} --checkpoint {input.checkpoints}"
        " --dataset voc --split val --out {output} > {log} 2>&1"
