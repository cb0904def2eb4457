# Speed (Tables 3 and 6, Fig. 7): region convolution, whole models, per-stage and per-rho timing.
# Threads come from resources.threads.bench; locally the `bench_slot` resource (one slot in the
# default profile) keeps benchmarks from running beside each other.

BENCH_KINDS = ("op", "models", "stages", "rho", "table6")
# The trained LC supplies real routing masks (mask_source) for the model-level timings.
BENCH_NEEDS_MODEL = {"models", "stages", "rho", "table6"}
# LC fast is a second model when evaluate.sweep_retrain (the one trained at evaluate.fast_rho).
BENCH_FAST_MODEL = {"models", "stages"} if SWEEP_RETRAIN else set()
# What each `lc bench <kind>` reads (model-level kinds also time the paper preset's full-size model).
BENCH_READS = {
    "op": ["bench.op_image_size", "bench.fractions", "bench.warmup", "bench.runs", "model.block_counts"],
    "models": ["bench.models", "evaluate.rho", "evaluate.fast_rho"],
    "stages": ["evaluate.rho", "evaluate.fast_rho"],
    "rho": ["evaluate.rho_sweep"],
    "table6": ["evaluate.rho", *protocol_reads("ms_crf")],
}
BENCH_MODEL_READS = ["seed", "model", "bench.image_size", "bench.batch_size", "bench.warmup", "bench.runs",
                     "bench.full_size_models", "bench.mask_sets"]


for _kind in BENCH_KINDS:

    rule:
        name:
            f"bench_{_kind}"
        input:
            config=ancient(RESOLVED_CONFIG),
            data=prepared("voc") if _kind in BENCH_NEEDS_MODEL else [],
            checkpoint=checkpoint("voc", "lc") if _kind in BENCH_NEEDS_MODEL else [],
            fast=checkpoint("voc", rho_run(EV["fast_rho"])) if _kind in BENCH_FAST_MODEL else [],
            # Fig. 7(a) with one LC model per rho: each routed rho timed with its own model's masks
            rho_models=[checkpoint("voc", run) for _, run in rho_models()] if _kind == "rho" else [],
        output:
            **bench_outputs(_kind),
        params:
            lc=LC,
            lc_args=LC_ARGS,
            command=f"bench {_kind}",
            flags=(
                (lambda wc, output, threads: f"--threads {threads} --png {output.png}")
                if _kind == "op"
                else (
                    lambda wc, input, threads: f"--threads {threads} --checkpoint {input.checkpoint}"
                    + (f" --fast-checkpoint {input.fast}" if input.fast else "")
                    + "".join(f" --rho-checkpoint {rho:g}={checkpoint('voc', run)}" for rho, run in rho_models()
                              if input.rho_models)
                )
            ),
            device=device_flag("bench") if _kind != "op" or GPUS.get("bench", 0) else "all",
            settings=bench_settings(_kind),
        log:
            log("bench", _kind),
        benchmark:
            out("benchmark", "bench", _kind)
        threads: threads_for("bench")
        resources:
            bench_slot=1,
            **resources_for("bench"),
        conda:
            env_for("bench")
        shell:
            "OMP_NUM_THREADS={threads} {params.lc} {params.command} {params.lc_args} {params.flags}"
            " --device {params.device} --out {output.csv} > {log} 2>&1"
