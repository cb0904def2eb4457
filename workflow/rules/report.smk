# Model size, provenance of a finished run. The HTML report is Snakemake's own:
#   snakemake --report results/<preset>/report.html [--config preset=...]
# It holds every output marked report(): tables, figures (training curves included), the op
# benchmark plot, the bench CSVs, model_info.csv and provenance.json.


rule model_info:
    """Parameters and FLOPs per stage of the configured and the full-size IRNet-LC."""
    input:
        config=ancient(RESOLVED_CONFIG),
    output:
        report(out("MODEL_INFO"), caption="../report/model_info.rst", category="Model"),
    params:
        lc=LC,
        lc_args=LC_ARGS,
        settings=reads("model", "bench.image_size", "evaluate.rho", "evaluate.fast_rho")
        + reads("model", "bench.image_size", cfg=PAPER_CFG),
    log:
        log("report", "model_info"),
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        "{params.lc} model-info {params.lc_args} --out {output} > {log} 2>&1"


rule provenance:
    """Git commit (+ dirty flag), config hash, package versions, device and time of the run."""
    input:
        config=ancient(RESOLVED_CONFIG),
        tables=TABLE_OUTPUTS,
        figures=FIGURE_OUTPUTS,
        bench=out("bench", "op"),
        model_info=rules.model_info.output,
    output:
        report(out("PROVENANCE"), caption="../report/provenance.rst", category="Provenance"),
    params:
        lc=LC,
        lc_args=LC_ARGS,
        # provenance records the whole resolved configuration (its hash)
        settings=json.dumps(CFG, sort_keys=True, default=str),
    log:
        log("report", "provenance"),
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        "{params.lc} provenance {params.lc_args} --out {output} > {log} 2>&1"
