# The six tables (ours beside the paper's numbers) and tables.md rendering all of them.
from lc.report.paper import PAPER_DIR, PAPER_TABLES

TABLE_OUTPUTS = [out("table", n) for n in outputs.TABLE_FILES]
TABLES_MD = out("TABLES_MD")
SWEEP_CSV = out("sweep_csv", "voc", "val")


# The config keys each table's builder reads (lc.report.tables), besides the run's outputs.
TABLE_READS = {
    1: ["evaluate.sweep_retrain", "train.rho", "evaluate.rho_sweep"],
    2: [],
    3: ["evaluate.fast_rho", "bench.models"],
    4: ["data.synthetic", "data.archives.voc2012_test"],
    5: [],
    6: ["model.width_mult"],
}


for _number in outputs.TABLE_FILES:

    rule:
        name:
            f"build_table{_number}"
        input:
            config=ancient(RESOLVED_CONFIG),
            published=str(PAPER_DIR / PAPER_TABLES[_number]),
            results=table_inputs(_number),
        output:
            report(
                out("table", _number),
                caption=f"../report/table{_number}.rst",
                category="Tables",
                labels={"table": f"Table {_number}"},
            ),
        params:
            lc=LC,
            lc_args=LC_ARGS,
            number=_number,
            settings=reads(*TABLE_READS[_number]),
            out_dir=lambda wc, output: str(Path(output[0]).parent),
        log:
            log("tables", f"table{_number}"),
        localrule: True
        threads: threads_for("report")
        resources:
            **resources_for("report"),
        conda:
            ENV_CPU
        shell:
            "{params.lc} tables {params.lc_args} --out-dir {params.out_dir} --table {params.number} > {log} 2>&1"

    rule:
        """Target: Table n and everything it needs."""
        name:
            f"table{_number}"
        localrule: True
        input:
            out("table", _number),


rule tables_markdown:
    """tables.md: all six tables in Markdown, with their protocols and notes."""
    input:
        config=ancient(RESOLVED_CONFIG),
        tables=TABLE_OUTPUTS,
    output:
        report(TABLES_MD, caption="../report/tables_md.rst", category="Tables",
               labels={"table": "all six (Markdown)"}),
    params:
        lc=LC,
        lc_args=LC_ARGS,
        out_dir=lambda wc, output: str(Path(output[0]).parent),
    log:
        log("tables", "tables_md"),
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        "{params.lc} tables {params.lc_args} --out-dir {params.out_dir} --markdown > {log} 2>&1"
