# Speed (Tables 3 and 6, Fig. 7): region convolution, whole models, per-stage and per-rho timing.
# Benchmarks take all the threads of their machine so that no other job runs beside them locally.

BENCH_OUTPUTS = {
    "op": f"{R}/bench/op_speedup.csv",
    "models": f"{R}/bench/table3_speed.csv",
    "stages": f"{R}/bench/stage_time.csv",
    "rho": f"{R}/bench/rho_speed.csv",
    "table6": f"{R}/bench/table6_fps.csv",
}
# `lc bench op` times region convolution alone; the others are model-level `lc bench <kind>`.
BENCH_COMMANDS = {"op": "bench op", "models": "bench models", "stages": "bench stages", "rho": "bench rho",
                  "table6": "bench table6"}
# The trained LC supplies real routing masks (mask_source) for the model-level timings.
BENCH_NEEDS_MODEL = {"models", "stages", "rho", "table6"}

for _kind, _csv in BENCH_OUTPUTS.items():

    rule:
        name:
            f"bench_{_kind}"
        input:
            data=prepared("voc") if _kind in BENCH_NEEDS_MODEL else [],
            checkpoint=checkpoint_of("voc", "lc") if _kind in BENCH_NEEDS_MODEL else [],
        output:
            _csv,
        params:
            lc_args=LC_ARGS,
            command=BENCH_COMMANDS[_kind],
            checkpoint=(lambda wc, input: f"--checkpoint {input.checkpoint}" if input.checkpoint else ""),
            settings=section("bench"),
        log:
            f"{LOGS}/bench/{_kind}.log",
        threads: workflow.cores if GPUS["bench"] == 0 else threads_for("bench")
        resources:
            **resources_for("bench"),
        conda:
            ENV_BENCH
        shell:
            "OMP_NUM_THREADS={threads} lc {params.command} {params.lc_args} {params.checkpoint}"
            " --out {output} > {log} 2>&1"
