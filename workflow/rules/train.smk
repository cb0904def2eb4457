# Cascade variants, all initialised from the pretrained IRNet: DSN, DSN + Dropout, LC, Model Cascade.


rule train:
    """One variant (dsn | dsn_dropout | lc | mc) of Table 2, started from the pretrained IRNet."""
    input:
        data=lambda wc: prepared(wc.dataset),
        init=f"{R}/runs/{{dataset}}/irnet/checkpoint.pt",
    output:
        checkpoint=f"{R}/runs/{{dataset}}/{{variant}}/checkpoint.pt",
        done=f"{R}/runs/{{dataset}}/{{variant}}/train_done.json",
    wildcard_constraints:
        variant="|".join(CASCADE_VARIANTS),
    params:
        lc_args=LC_ARGS,
        launcher=train_launcher(GPUS["train"]),
        settings=section("seed", "model", "train"),
        out_dir=lambda wc, output: str(Path(output.checkpoint).parent),
    log:
        f"{LOGS}/train/{{dataset}}_{{variant}}.log",
    threads: threads_for("train")
    resources:
        **resources_for("train"),
    conda:
        ENV_TRAIN
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} train {params.lc_args}"
        " --dataset {wildcards.dataset} --variant {wildcards.variant} --init {input.init}"
        " --out {params.out_dir} > {log} 2>&1"


rule train_rho:
    """evaluate.sweep_retrain: one LC model trained with routing threshold rho (Table 1, retrained)."""
    input:
        data=prepared("voc"),
        init=f"{R}/runs/voc/irnet/checkpoint.pt",
    output:
        checkpoint=f"{R}/runs/voc/lc_rho{{rho}}/checkpoint.pt",
        done=f"{R}/runs/voc/lc_rho{{rho}}/train_done.json",
    params:
        lc_args=LC_ARGS,
        launcher=train_launcher(GPUS["train"]),
        settings=section("seed", "model", "train"),
        out_dir=lambda wc, output: str(Path(output.checkpoint).parent),
    log:
        f"{LOGS}/train/voc_lc_rho{{rho}}.log",
    threads: threads_for("train")
    resources:
        **resources_for("train"),
    conda:
        ENV_TRAIN
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} train {params.lc_args}"
        " --dataset voc --variant lc --rho {wildcards.rho} --init {input.init}"
        " --out {params.out_dir} > {log} 2>&1"
