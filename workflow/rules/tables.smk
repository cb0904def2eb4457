# The six tables (ours beside the paper's numbers) and tables.md rendering all of them.
from lc.report.paper import PAPER_DIR, PAPER_TABLES

TABLE_OUTPUTS = [out("table", n) for n in outputs.TABLE_FILES]
TABLES_MD = out("TABLES_MD")
SWEEP_CSV = out("sweep_csv", "voc", "val")


def eval_json(dataset, run, protocol="single"):
    return out("eval_json", dataset, run, "val", protocol)


def table_inputs(number):
    """The run outputs table `number` reads (lc.report.tables); only what this preset produces."""
    voc = "voc" in DATASETS
    lc_protocols = [eval_json("voc", "lc", p) for p in outputs.EVAL_PROTOCOLS] if voc else []
    if number == 1:
        return [SWEEP_CSV] if voc else []
    if number == 2:
        return [f for v in TABLE2_ORDER for f in (eval_json("voc", v), out("train_done", "voc", v))] if voc else []
    if number == 3:
        return [out("bench", "models")] + ([eval_json("voc", "lc"), eval_json("voc", "irnet"), SWEEP_CSV] if voc else [])
    if number == 4:
        exports = [f"{R}/{outputs.VOC_TEST_ARCHIVE}", out("export_summary", outputs.VOC_TEST_ARCHIVE)] if VOC_TEST else []
        return lc_protocols + exports
    if number == 5:
        if "cityscapes" not in DATASETS:
            return []
        archive = outputs.CITYSCAPES_TEST_ARCHIVE
        return [eval_json("cityscapes", "lc"), f"{R}/{archive}", out("export_summary", archive)]
    return [out("bench", "table6"), out("bench", "models")] + lc_protocols


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
            "{LC} tables {LC_ARGS} --out-dir {params.out_dir} --table {params.number} > {log} 2>&1"

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
        out_dir=lambda wc, output: str(Path(output[0]).parent),
    log:
        log("tables", "tables_md"),
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        "{LC} tables {LC_ARGS} --out-dir {params.out_dir} --markdown > {log} 2>&1"
