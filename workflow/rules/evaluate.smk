# Evaluation on val (labels known) under a test protocol (single scale; multi-scale; + dense CRF),
# the rho sweep of Table 1, and the test-set exports for the evaluation servers.


rule evaluate:
    """mIoU, per-class IoU, stage shares and timing of one trained run under one test protocol."""
    input:
        config=ancient(RESOLVED_CONFIG),
        data=lambda wc: prepared(wc.dataset),
        checkpoint=checkpoint("{dataset}", "{run}"),
    output:
        # eval_<split><protocol suffix>.json: the tag is the split and the protocol's suffix
        out("eval_json", "{dataset}", "{run}", "{tag}"),
    wildcard_constraints:
        run="|".join([*VARIANTS, BUDGET_CONTROL]),
        tag="(train|val)(" + "|".join(s for s in outputs.EVAL_PROTOCOLS.values() if s) + ")?",
    params:
        lc=LC,
        lc_args=LC_ARGS,
        split=lambda wc: eval_tag(wc.tag)[0],
        flags=lambda wc: PROTOCOL_FLAGS[eval_tag(wc.tag)[1]],
        device=device_flag("evaluate"),
        settings=lambda wc: reads("evaluate.max_images", *protocol_reads(eval_tag(wc.tag)[1]),
                                  *eval_region_reads(wc.run)),
    log:
        log("evaluate", "{dataset}_{run}_{tag}"),
    benchmark:
        out("benchmark", "evaluate", "{dataset}_{run}_{tag}")
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    conda:
        env_for("evaluate")
    shell:
        "OMP_NUM_THREADS={threads} {params.lc} evaluate {params.lc_args} --checkpoint {input.checkpoint}"
        " --dataset {wildcards.dataset} --split {params.split} {params.flags} --device {params.device}"
        " --out {output} > {log} 2>&1"


rule sweep:
    """% of pixels decided at each stage and mIoU for every rho of evaluate.rho_sweep."""
    input:
        config=ancient(RESOLVED_CONFIG),
        data=prepared("voc"),
        checkpoints=sorted({checkpoint("voc", run) for _, run in sweep_pairs()}),
    output:
        out("sweep_csv", "voc", "val"),
    params:
        lc=LC,
        lc_args=LC_ARGS,
        # with one checkpoint per rho, `lc sweep` pairs the i-th --checkpoint with the i-th --rho
        pairs=" ".join(
            (f"--checkpoint {checkpoint('voc', run)} " if SWEEP_RETRAIN else "") + f"--rho {rho:g}"
            for rho, run in sweep_pairs()
        ) + ("" if SWEEP_RETRAIN else f" --checkpoint {checkpoint('voc', 'lc')}"),
        device=device_flag("evaluate"),
        settings=reads("evaluate.max_images", *region_reads()),
    log:
        log("evaluate", "sweep_voc_val"),
    benchmark:
        out("benchmark", "evaluate", "sweep_voc_val")
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    conda:
        env_for("evaluate")
    shell:
        "OMP_NUM_THREADS={threads} {params.lc} sweep {params.lc_args} {params.pairs} --dataset voc --split val"
        " --device {params.device} --out {output} > {log} 2>&1"


EXPORTS = {"voc": outputs.VOC_TEST_ARCHIVE, "cityscapes": outputs.CITYSCAPES_TEST_ARCHIVE}
# VOC: the paper's best test protocol (Table 4's LC row = Table 6's multi-scale + CRF)
EXPORT_PROTOCOLS = {"voc": "ms_crf", "cityscapes": CITYSCAPES_EXPORT_PROTOCOL}


for _dataset, _archive in EXPORTS.items():

    rule:
        """Test-set predictions of LC in the evaluation server's format (VOC comp6 tar, Cityscapes zip)."""
        name:
            f"export_{_dataset}"
        input:
            config=ancient(RESOLVED_CONFIG),
            data=prepared(_dataset),
            checkpoint=checkpoint(_dataset, export_run(_dataset)),
        output:
            archive=f"{R}/{_archive}",
            summary=out("export_summary", _archive),
        params:
            lc=LC,
            lc_args=LC_ARGS,
            dataset=_dataset,
            flags=PROTOCOL_FLAGS[EXPORT_PROTOCOLS[_dataset]],
            device=device_flag("evaluate"),
            settings=reads(*protocol_reads(EXPORT_PROTOCOLS[_dataset]), *region_reads(),
                           *(["evaluate.cityscapes_export"] if _dataset == "cityscapes"
                             else ["evaluate.export_train_split"])),
        log:
            log("evaluate", f"export_{_dataset}"),
        benchmark:
            out("benchmark", "evaluate", f"export_{_dataset}")
        threads: threads_for("evaluate")
        resources:
            **resources_for("evaluate"),
        conda:
            env_for("evaluate")
        shell:
            "OMP_NUM_THREADS={threads} {params.lc} export {params.lc_args} --checkpoint {input.checkpoint}"
            " --dataset {params.dataset} {params.flags} --device {params.device} --out {output.archive} > {log} 2>&1"
