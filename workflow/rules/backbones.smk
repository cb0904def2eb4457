# "LC across backbones" (ours; README, "Backbones"): `snakemake backbones`, not part of
# reproduce_tables. Per backbone of backbones.compare and data set of backbones.datasets: ImageNet
# weights -> dense single-loss network -> DSN -> LC (from train.cascade_init, as IRNet's chain),
# their sweeps on the val split, and `lc bench backbone`; then one table and one figure. IRNet's runs
# are the main runs (runs/<dataset>/<variant>/), so its chain is not trained twice.
include: "backbones_common.smk"


wildcard_constraints:
    backbone="|".join(BB_OTHERS) or "NONE",
    bb_variant="|".join(BB_VARIANTS),


rule backbones:
    """LC across backbones: tables/backbones.csv and .md and figures/backbones_miou_speedup.png."""
    input:
        out("BACKBONES_TABLE"),
        out("BACKBONES_MD"),
        out("figure", outputs.BACKBONES_FIGURE),


if SYNTHETIC:

    rule backbone_synth_weights:
        """Synthetic presets: the backbone's ImageNet stand-in in timm's layout, and its SHA-256."""
        input:
            config=ancient(RESOLVED_CONFIG),
        output:
            weights=f"{MIRROR}/{{backbone}}.pth",
            weights_sha256=f"{MIRROR}/{{backbone}}.pth.sha256",
        params:
            lc=LC,
            args=lambda wc: bb_args(wc.backbone),
            settings=lambda wc: bb_reads(wc.backbone, "seed"),
        log:
            log("data", "synth_{backbone}"),
        threads: threads_for("prepare")
        resources:
            **resources_for("prepare"),
        conda:
            ENV_CPU
        shell:
            "{params.lc} synth {params.args} > {log} 2>&1"


rule backbone_weights:
    """timm's ImageNet weights of a backbone (hub or data.mirror), SHA-256 verified."""
    input:
        config=ancient(RESOLVED_CONFIG),
        mirror=[f"{MIRROR}/{{backbone}}.pth"] if SYNTHETIC else [],
    output:
        f"{DATA}/weights/{{backbone}}.pth",
    params:
        lc=LC,
        args=lambda wc: bb_args(wc.backbone),
        settings=lambda wc: bb_reads(wc.backbone, "data.mirror"),
    log:
        log("train", "weights_{backbone}"),
    threads: threads_for("download")
    resources:
        **resources_for("download"),
    conda:
        ENV_CPU
    shell:
        "{params.lc} weights {params.args} > {log} 2>&1"


rule backbone_train:
    """A backbone's dense (single-loss) network, its DSN, or its LC."""
    input:
        config=ancient(RESOLVED_CONFIG),
        data=lambda wc: prepared(wc.dataset),
        weights=lambda wc: [f"{DATA}/weights/{wc.backbone}.pth"] if wc.bb_variant == "irnet" else [],
        init=_bb_init,
    output:
        checkpoint=bb_checkpoint("{backbone}", "{dataset}", "{bb_variant}"),
    params:
        lc=LC,
        args=lambda wc: bb_args(wc.backbone),
        init=lambda wc, input: f"--init {input.init}" if input.init else "",
        device=device_flag("train"),
        settings=lambda wc: bb_train_reads(wc.backbone, wc.bb_variant),
        out_dir=lambda wc, output: str(Path(output.checkpoint).parent),
    log:
        log("train", "backbone_{backbone}_{dataset}_{bb_variant}"),
    benchmark:
        out("benchmark", "train", "backbone_{backbone}_{dataset}_{bb_variant}")
    threads: threads_for("train")
    resources:
        **resources_for("train"),
    conda:
        env_for("train")
    shell:
        # every attempt's lines kept in {log}.attempts, as the train rule does (train.smk)
        "{{ echo \"=== attempt at $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
        "${{SLURM_JOB_ID:+, SLURM job $SLURM_JOB_ID}} ===\";"
        " OMP_NUM_THREADS={threads} {params.lc} train {params.args} --dataset {wildcards.dataset}"
        " --variant {wildcards.bb_variant} {params.init} --device {params.device}"
        " --out {params.out_dir}; }} 2>&1"
        " | (trap '' TERM USR1 INT; exec tee -a {log}.attempts) > {log}"


rule backbone_sweep:
    """A backbone's dense network (sweep_dense, at rho 1) or its LC (sweep_lc, at every rho) on val."""
    input:
        config=ancient(RESOLVED_CONFIG),
        data=lambda wc: prepared(wc.dataset),
        checkpoint=lambda wc: bb_checkpoint(wc.bb, wc.dataset, "irnet" if wc.sweep == "sweep_dense" else "lc"),
    output:
        bb_out("{sweep}", "{bb}", "{dataset}"),
    wildcard_constraints:
        bb="|".join(BB_NAMES) or "NONE",
        sweep="sweep_dense|sweep_lc",
    params:
        lc=LC,
        args=lambda wc: bb_args(wc.bb),
        rhos=lambda wc: "--rho 1" if wc.sweep == "sweep_dense" else " ".join(f"--rho {r:g}" for r in BB_RHOS),
        device=device_flag("evaluate"),
        settings=lambda wc: bb_reads(wc.bb, "evaluate.max_images", "backbones.rhos", "evaluate.rho"),
    log:
        log("evaluate", "backbone_{sweep}_{bb}_{dataset}"),
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    conda:
        env_for("evaluate")
    shell:
        "OMP_NUM_THREADS={threads} {params.lc} sweep {params.args} --checkpoint {input.checkpoint}"
        " {params.rhos} --dataset {wildcards.dataset} --split val --device {params.device}"
        " --out {output} > {log} 2>&1"


rule backbone_bench:
    """LC against the same backbone dense: ms and FLOP-predicted speedup at every rho."""
    input:
        config=ancient(RESOLVED_CONFIG),
        data=prepared("voc"),  # the routing masks come from VOC val images (lc.bench.masks)
        checkpoint=lambda wc: bb_checkpoint(wc.bb, wc.dataset, "lc"),
    output:
        bb_out("bench", "{bb}", "{dataset}"),
    wildcard_constraints:
        bb="|".join(BB_NAMES) or "NONE",
    params:
        lc=LC,
        args=lambda wc: bb_args(wc.bb),
        device=device_flag("bench"),
        settings=lambda wc: bb_reads(wc.bb, "seed", "model", "bench", "backbones.rhos", "evaluate.rho"),
    log:
        log("bench", "backbone_{bb}_{dataset}"),
    threads: threads_for("bench")
    resources:
        bench_slot=1,
        **resources_for("bench"),
    conda:
        env_for("bench")
    shell:
        "OMP_NUM_THREADS={threads} {params.lc} bench backbone {params.args} --threads {threads}"
        " --checkpoint {input.checkpoint} --device {params.device} --out {output} > {log} 2>&1"


rule backbones_table:
    """LC across backbones: the table (CSV + markdown) and the mIoU vs measured speedup figure."""
    input:
        config=ancient(RESOLVED_CONFIG),
        results=[bb_out(k, b, d) for b in BB_NAMES for d in BB_DATASETS for k in ("sweep_dense", "sweep_lc",
                                                                                    "bench")],
    output:
        table=report(out("BACKBONES_TABLE"), caption="../report/backbones.rst", category="Backbones"),
        markdown=out("BACKBONES_MD"),
        figure=report(out("figure", outputs.BACKBONES_FIGURE), caption="../report/backbones.rst",
                      category="Backbones"),
        pdf=out("figure", outputs.BACKBONES_FIGURE, "pdf"),
    params:
        lc=LC,
        lc_args=LC_ARGS,
        settings=reads("backbones", "evaluate.rho", "model"),
    log:
        log("report", "backbones_table"),
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        "{params.lc} backbones-table {params.lc_args} > {log} 2>&1"


# small jobs beside Snakemake (downloads need the login node's network)
localrules:
    backbones,
    backbone_weights,
    backbones_table,


if SYNTHETIC:

    localrules:
        backbone_synth_weights,
