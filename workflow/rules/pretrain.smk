# Pretraining: the single-loss IRNet baseline every cascade variant starts from (Table 2 "IRNet").


rule pretrain:
    """IRNet with one loss at the end (train.iterations.pretrain)."""
    input:
        lambda wc: prepared(wc.dataset),
    output:
        checkpoint=f"{R}/runs/{{dataset}}/irnet/checkpoint.pt",
        done=f"{R}/runs/{{dataset}}/irnet/train_done.json",
    params:
        lc_args=LC_ARGS,
        launcher=train_launcher(GPUS["train"]),
        settings=section("seed", "model", "train"),
        out_dir=lambda wc, output: str(Path(output.checkpoint).parent),
    log:
        f"{LOGS}/train/{{dataset}}_irnet.log",
    threads: threads_for("train")
    resources:
        **resources_for("train"),
    conda:
        ENV_TRAIN
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} train {params.lc_args}"
        " --dataset {wildcards.dataset} --variant irnet --out {params.out_dir} > {log} 2>&1"
