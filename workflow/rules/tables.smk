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
            lc_args=LC_ARGS,
            number=_number,
            out_dir=lambda wc, output: str(Path(output[0]).parent),
        log:
            f"{LOGS}/tables/table{_number}.log",
        threads: threads_for("report")
        resources:
            **resources_for("report"),
        conda:
            ENV_CPU
        shell:
            "lc tables {params.lc_args} --out-dir {params.out_dir} --table {params.number} > {log} 2>&1"

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
        lc_args=LC_ARGS,
        out_dir=lambda wc, output: str(Path(output[0]).parent),
    log:
        f"{LOGS}/tables/tables_md.log",
    threads: threads_for("report")
    resources:
        **resources_for("report"),
    conda:
        ENV_CPU
    shell:
        "lc tables {params.lc_args} --out-dir {params.out_dir} --markdown > {log} 2>&1"
