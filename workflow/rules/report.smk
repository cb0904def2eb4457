# Provenance of a finished run, and the self-contained HTML report.


rule model_info:
    """Parameters and FLOPs per stage of the configured and the full-size IRNet-LC."""
    output:
        f"{R}/model_info.json",
    params:
        settings=section("model"),
    log:
        f"{LOGS}/report/model_info.log",
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        "lc model-info {LC_ARGS} --out {output} > {log} 2>&1"


rule provenance:
    """Git commit (+ dirty flag), config hash, package versions, device and time of the run."""
    input:
        TABLE_OUTPUTS,
        FIGURE_OUTPUTS,
        BENCH_OUTPUTS["op"],
        f"{R}/model_info.json",
    output:
        report(f"{R}/provenance.json", caption="../report/provenance.rst", category="Provenance"),
    params:
        config_hash=config_hash(CFG),
    log:
        f"{LOGS}/report/provenance.log",
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        "lc provenance {LC_ARGS} --out {output} > {log} 2>&1"
