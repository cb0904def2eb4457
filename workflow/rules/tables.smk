# The six tables (ours beside the paper's numbers) and tables.md rendering all of them.

TABLE_FILES = {
    1: "table1_rho_sweep.csv",
    2: "table2_ablation.csv",
    3: "table3_speed.csv",
    4: "table4_voc_per_class.csv",
    5: "table5_cityscapes_per_class.csv",
    6: "table6_sota.csv",
}
TABLE_OUTPUTS = [f"{R}/tables/{name}" for name in TABLE_FILES.values()]
SWEEP_CSV = f"{R}/runs/voc/lc/sweep_val.csv"


def eval_json(dataset, variant, protocol=""):
    return f"{R}/runs/{dataset}/{variant}/eval_val{protocol}.json"


def table_inputs(number):
    """The run outputs table `number` reads (lc.tables); only what this preset produces."""
    voc = "voc" in DATASETS
    if number == 1:
        return [SWEEP_CSV] if voc else []
    if number == 2:
        return [eval_json("voc", v) for v in VOC_VARIANTS] if voc else []
    if number == 3:
        return [BENCH_OUTPUTS["models"]] + (
            [eval_json("voc", "lc"), eval_json("voc", "irnet"), SWEEP_CSV] if voc else [])
    if number == 4:
        if not voc:
            return []
        exports = [f"{R}/export/voc_test_comp6.tar.gz"] if VOC_TEST else []
        return [eval_json("voc", "lc", p) for p in ("", "_ms", "_ms_crf")] + exports
    if number == 5:
        if "cityscapes" not in DATASETS:
            return []
        return [eval_json("cityscapes", "lc"), f"{R}/export/cityscapes_test.zip"]
    return [BENCH_OUTPUTS["table6"], BENCH_OUTPUTS["models"]] + (
        [eval_json("voc", "lc", p) for p in ("", "_ms", "_ms_crf")] if voc else [])


for _number, _name in TABLE_FILES.items():

    rule:
        name:
            f"build_table{_number}"
        input:
            table_inputs(_number),
        output:
            report(
                f"{R}/tables/{_name}",
                caption=f"../report/table{_number}.rst",
                category="Tables",
                labels={"table": f"Table {_number}"},
            ),
        params:
            number=_number,
            out_dir=f"{R}/tables",
        log:
            f"{LOGS}/tables/table{_number}.log",
        threads: threads_for("report")
        resources:
            **resources_for("report"),
        conda:
            ENV_CPU
        shell:
            "lc tables {LC_ARGS} --out-dir {params.out_dir} --table {params.number} > {log} 2>&1"

    rule:
        """Target: Table n and everything it needs."""
        name:
            f"table{_number}"
        input:
            f"{R}/tables/{_name}",


rule tables_markdown:
    """tables.md: all six tables in Markdown, with their protocols and notes."""
    input:
        TABLE_OUTPUTS,
    output:
        report(f"{R}/tables/tables.md", caption="../report/tables_md.rst", category="Tables",
               labels={"table": "all six (Markdown)"}),
    params:
        out_dir=f"{R}/tables",
    log:
        f"{LOGS}/tables/tables_md.log",
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        "lc tables {LC_ARGS} --out-dir {params.out_dir} --markdown > {log} 2>&1"
