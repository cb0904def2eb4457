# Provenance of a finished run, and the self-contained HTML report.


rule model_info:
    """Parameters and FLOPs per stage of the configured and the full-size IRNet-LC."""
    output:
        f"{R}/model_info.csv",
    params:
        lc_args=LC_ARGS,
        settings=section("model"),
    log:
        f"{LOGS}/report/model_info.log",
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        "lc model-info {params.lc_args} --out {output} > {log} 2>&1"


rule provenance:
    """Git commit (+ dirty flag), config hash, package versions, device and time of the run."""
    input:
        TABLE_OUTPUTS,
        FIGURE_OUTPUTS,
        BENCH_OUTPUTS["op"],
        f"{R}/model_info.csv",
    output:
        report(f"{R}/provenance.json", caption="../report/provenance.rst", category="Provenance"),
    params:
        lc_args=LC_ARGS,
        config_hash=config_hash(CFG),
    log:
        f"{LOGS}/report/provenance.log",
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        "lc provenance {params.lc_args} --out {output} > {log} 2>&1"


rule report:
    """Target: the self-contained HTML report (tables, figures, captions, provenance) of this preset."""
    input:
        TABLE_OUTPUTS,
        f"{R}/tables/tables.md",
        FIGURE_OUTPUTS,
        f"{R}/provenance.json",
    output:
        f"{R}/report.html",
    params:
        preset=PRESET,
    log:
        f"{LOGS}/report/report.log",
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        # Snakemake renders its own report from the run's metadata; --nolock because this job runs
        # inside the workflow that holds the lock.
        "snakemake --nolock --cores {threads} --report {output} reproduce_tables --config preset={params.preset} > {log} 2>&1"
