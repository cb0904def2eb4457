# Training: ImageNet weights -> (BN recalibration) -> IRNet (single loss) -> DSN -> LC / DSN + Dropout, and the Model
# Cascade; one rule for every run (lc.models.variants says what each starts from and its budget).


rule weights:
    """timm's ImageNet inception_resnet_v2 weights (hub or data.mirror), SHA-256 verified."""
    input:
        config=ancient(RESOLVED_CONFIG),
        # synthetic presets: the stand-in `lc synth` writes into the mirror
        mirror=[f"{MIRROR}/{WEIGHTS_FILENAME}"] if SYNTHETIC else [],
    output:
        str(weights_path(CFG)),
    params:
        lc=LC,
        lc_args=LC_ARGS,
        settings=reads(*(f"model.{k}" for k in sorted(IMAGENET_KEYS & set(CFG["model"]))), "data.mirror"),
    log:
        log("train", "weights"),
    threads: threads_for("download")
    resources:
        **resources_for("download"),
    conda:
        ENV_CPU
    shell:
        "{params.lc} weights {params.lc_args} > {log} 2>&1"


rule recalibrate_bn:
    """The IRNet pretraining's start: ImageNet weights, BatchNorm statistics recomputed over
    train.bn_recalibration_images training images (the truncated network's BN, see the README)."""
    input:
        config=ancient(RESOLVED_CONFIG),
        data=lambda wc: prepared(wc.dataset),
        weights=pretrained_weights(),
    output:
        out("bn_start", "{dataset}"),
    params:
        lc=LC,
        lc_args=LC_ARGS,
        device=device_flag("train"),
        settings=reads(*recalibration_reads()),
    log:
        log("train", "{dataset}_recalibrate_bn"),
    threads: threads_for("train")
    resources:
        **resources_for("train"),
    conda:
        env_for("train")
    shell:
        "OMP_NUM_THREADS={threads} {params.lc} recalibrate-bn {params.lc_args} --dataset {wildcards.dataset}"
        " --device {params.device} --out {output} > {log} 2>&1"


rule train:
    """One run: a variant of Table 2, an LC model at another rho, or the VOC test export's LC model."""
    input:
        config=ancient(RESOLVED_CONFIG),
        data=lambda wc: prepared(wc.dataset),
        init=_train_init,
    output:
        checkpoint=protected(checkpoint("{dataset}", "{run}")),
        # train_log.csv is not declared: Snakemake deletes a job's outputs before rerunning it, and a
        # resumed run (resume.pt) appends to its log; train_done.json stands for the finished log.
        done=out("train_done", "{dataset}", "{run}"),
    wildcard_constraints:
        run="|".join([*VARIANTS, BUDGET_CONTROL, r"lc_rho[0-9.]+", re.escape(outputs.split_run_name("lc", EXPORT_SPLIT))]),
    params:
        lc=LC,
        lc_args=LC_ARGS,
        launcher=launcher("train"),
        flags=_train_flags,
        device=device_flag("train"),
        settings=lambda wc: reads(*train_reads(wc.run)),
        out_dir=lambda wc, output: str(Path(output.checkpoint).parent),
    log:
        log("train", "{dataset}_{run}"),
    benchmark:
        out("benchmark", "train", "{dataset}_{run}")
    threads: threads_for("train")
    resources:
        **resources_for("train"),
    conda:
        env_for("train")
    shell:
        # {log}: this attempt (Snakemake empties it before each); {log}.attempts: every attempt, each
        # under a header (a resubmitted training resumes: its earlier lines stay there). tee ignores
        # TERM/USR1 so that the stopping training can still write its last lines.
        "{{ echo \"=== attempt at $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
        "${{SLURM_JOB_ID:+, SLURM job $SLURM_JOB_ID}} ===\";"
        " OMP_NUM_THREADS={threads} {params.launcher} train {params.lc_args} --dataset {wildcards.dataset}"
        " {params.flags} --device {params.device} --out {params.out_dir}; }} 2>&1"
        " | (trap '' TERM USR1 INT; exec tee -a {log}.attempts) > {log}"
