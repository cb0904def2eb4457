# Evaluation on val (labels known): single scale; for LC on VOC also multi-scale + flip, and + dense CRF.

EVAL_FLAGS = {"ms": "--multi-scale", "ms_crf": "--multi-scale --crf"}


rule evaluate:
    """Single-scale evaluation of one trained variant: mIoU, per-class IoU, stage shares, timing."""
    input:
        data=lambda wc: prepared(wc.dataset),
        checkpoint=f"{R}/runs/{{dataset}}/{{variant}}/checkpoint.pt",
    output:
        f"{R}/runs/{{dataset}}/{{variant}}/eval_{{split}}.json",
    params:
        lc_args=LC_ARGS,
        settings=section("evaluate"),
    log:
        f"{LOGS}/evaluate/{{dataset}}_{{variant}}_{{split}}.log",
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    conda:
        ENV_EVAL
    shell:
        "OMP_NUM_THREADS={threads} lc evaluate {params.lc_args} --checkpoint {input.checkpoint}"
        " --dataset {wildcards.dataset} --split {wildcards.split} --out {output} > {log} 2>&1"


rule evaluate_multi_scale:
    """Multi-scale + flip (`ms`) and additionally dense CRF (`ms_crf`): Table 6."""
    input:
        data=lambda wc: prepared(wc.dataset),
        checkpoint=f"{R}/runs/{{dataset}}/{{variant}}/checkpoint.pt",
    output:
        f"{R}/runs/{{dataset}}/{{variant}}/eval_{{split}}_{{protocol}}.json",
    wildcard_constraints:
        protocol="ms|ms_crf",
    params:
        lc_args=LC_ARGS,
        flags=lambda wc: EVAL_FLAGS[wc.protocol],
        settings=section("evaluate"),
    log:
        f"{LOGS}/evaluate/{{dataset}}_{{variant}}_{{split}}_{{protocol}}.log",
    threads: threads_for("evaluate")
    resources:
        **resources_for("evaluate"),
    conda:
        ENV_EVAL
    shell:
        "OMP_NUM_THREADS={threads} lc evaluate {params.lc_args} --checkpoint {input.checkpoint}"
        " --dataset {wildcards.dataset} --split {wildcards.split} {params.flags} --out {output} > {log} 2>&1"


EXPORTS = {"voc": "voc_test_comp6.tar.gz", "cityscapes": "cityscapes_test.zip"}


for _dataset, _archive in EXPORTS.items():

    rule:
        """Test-set predictions of LC in the evaluation server's format (VOC comp6 tar, Cityscapes zip)."""
        name:
            f"export_{_dataset}"
        input:
            data=prepared(_dataset),
            checkpoint=checkpoint_of(_dataset, "lc"),
        output:
            archive=f"{R}/export/{_archive}",
            summary=f"{R}/export/{export_summary(_archive)}",
        params:
            lc_args=LC_ARGS,
            dataset=_dataset,
            # VOC: the paper's best test protocol (Table 4's LC row = Table 6's multi-scale + CRF)
            protocol="--multi-scale --crf" if _dataset == "voc" else "",
            settings=section("evaluate"),
        log:
            f"{LOGS}/evaluate/export_{_dataset}.log",
        threads: threads_for("evaluate")
        resources:
            **resources_for("evaluate"),
        conda:
            ENV_EVAL
        shell:
            "OMP_NUM_THREADS={threads} lc export {params.lc_args} --checkpoint {input.checkpoint}"
            " --dataset {params.dataset} {params.protocol} --out {output.archive} > {log} 2>&1"
