"""`lc bench op | models | stages | rho | table6` and `lc model-info`: speed and model size."""

from __future__ import annotations

import argparse

from lc.cli.common import add_device_argument, config_with_region, nonneg_int, positive_int, rho_arg
from lc.config import config_from_args, load_config

# The model-level benchmarks (lc.bench.run.BENCH_KINDS) and what each measures.
BENCH_HELP = {"models": "ms and FPS of bench.models (DeepLab-v2, SegNet, dense IRNet, LC, LC fast)",
              "stages": "ms per stage of LC at evaluate.rho and fast_rho, and of dense IRNet",
              "rho": "LC's ms per image at every rho of evaluate.rho_sweep",
              "table6": "LC's FPS single scale, multi-scale (evaluate protocol), and multi-scale + dense CRF"}
FULL_SIZE_PRESET = "paper"  # "full size" = the paper preset's model


def _print_table(table, float_format: str = "{:.4g}") -> None:
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=float_format.format))


def _cmd_model_info(args: argparse.Namespace) -> None:
    from lc.report.model_info import run_model_info

    table, savings = run_model_info(config_from_args(args), load_config(args.config, preset=FULL_SIZE_PRESET),
                                    args.out)
    _print_table(table.drop(columns=["preset"]))
    print("\n".join(savings))
    if args.out:
        print(f"wrote {args.out}")


def _cmd_bench_op(args: argparse.Namespace) -> None:
    from lc.bench.run import run_op_benchmark

    table = run_op_benchmark(config_from_args(args), args.out, args.png, device=args.device,
                             warmup=args.warmup, runs=args.runs, threads=args.threads)
    _print_table(table, "{:.3f}")
    print(f"wrote {args.out}")


def _cmd_bench(args: argparse.Namespace) -> None:
    from lc.bench.run import run_benchmark, speedup_lines
    from lc.report.paper import load_paper_table

    full_cfg = load_config(args.config, preset=FULL_SIZE_PRESET)
    table = run_benchmark(args.kind, config_from_args(args), full_cfg, args.out, checkpoint=args.checkpoint,
                          device=args.device, warmup=args.warmup, runs=args.runs, threads=args.threads,
                          paper_table1=load_paper_table(1),
                          fast_checkpoint=getattr(args, "fast_checkpoint", None),
                          rho_checkpoints=dict(getattr(args, "rho_checkpoint", None) or []))
    _print_table(table)
    if args.kind == "models":
        print("\n".join(speedup_lines(table)))
    elif args.kind == "stages":
        from lc.bench.stages import bound_lines

        print("\n".join(bound_lines(table)))
    print(f"wrote {args.out}")


def _cmd_gpu_check(args: argparse.Namespace) -> None:
    from lc.bench.gpu_check import run_gpu_check
    from lc.device import resolve_device

    run_gpu_check(args.out, device=str(resolve_device(args.device)), quick=args.quick,
                  budget_s=args.budget_s if args.budget_s > 0 else None)
    print(f"wrote {args.out}")


def _cmd_gpu_compile(args: argparse.Namespace) -> None:
    from lc.bench.gpu_compile import run_gpu_compile

    if not run_gpu_compile(args.out, target=args.target, quick=args.quick):
        raise SystemExit(1)
    print(f"wrote {args.out}")


def _cmd_bench_train(args: argparse.Namespace) -> None:
    from lc.bench.train_step import TrainBench, run_train_bench
    from lc.device import resolve_device

    config_with_region(args)  # the planned region path as configured
    device = resolve_device(args.device)
    bench = TrainBench.quick(device) if args.quick else TrainBench(device)
    for name in ("batch", "crop", "iterations"):
        if getattr(args, name) is not None:
            setattr(bench, name, getattr(args, name))
    bench.amp = not args.no_amp
    table = run_train_bench(args.out, bench)
    _print_table(table)
    print(f"wrote {args.out}")


def _rho_checkpoint(text: str) -> tuple[float, str]:
    """RHO=CKPT -> (rho, path)."""
    rho, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected RHO=CHECKPOINT, got {text!r}")
    return rho_arg(rho), path


def _cmd_bench_backbone(args: argparse.Namespace) -> None:
    from lc.bench.backbones import run_backbone_bench

    cfg = config_from_args(args)
    name = args.backbone or cfg["model"].get("backbone", "irnet")
    table = run_backbone_bench(cfg, args.checkpoint, args.out, name, device=args.device, warmup=args.warmup,
                               runs=args.runs, threads=args.threads)
    _print_table(table.drop(columns=["stage_flop_shares", "mask_source"]))
    print(f"wrote {args.out}")


def _add_repeats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warmup", type=nonneg_int, default=None, help="warm-up runs (default: bench.warmup)")
    p.add_argument("--runs", type=positive_int, default=None, help="timed runs (default: bench.runs)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads of the timings (default: bench.threads)")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("model-info", parents=[common], help="parameters and GFLOPs per stage (configured and "
                       "full-size IRNet-LC, DeepLab-v2, SegNet) beside the paper's")
    p.add_argument("--out", default=None, help="also write the table to this CSV")
    p.set_defaults(func=_cmd_model_info)

    p = sub.add_parser("bench", help="speed benchmarks: op (region conv), models (Table 3), stages "
                                     "(Fig. 7b), rho (Fig. 7a), table6 (Table 6 FPS)")
    kinds = p.add_subparsers(dest="kind", required=True)
    q = kinds.add_parser("op", parents=[common], help="region conv speed: full-width IRNet stage 2 and "
                         "single convs, dense vs masked vs compressed, over active fractions")
    q.add_argument("--out", required=True, help="CSV to write (a PNG plot goes beside it)")
    q.add_argument("--png", default=None, help="plot path (default: the CSV path with .png)")
    add_device_argument(q, choices=("all", "cpu", "cuda"), default="all",
                        help_text="all: the CPU, plus CUDA when usable")
    _add_repeats(q)
    q.set_defaults(func=_cmd_bench_op)
    q = kinds.add_parser("gpu-check", parents=[common], help="the one GPU check of region execution (<= 6 "
                         "min on one GPU): GPU tests, graphed vs eager, launches, stage efficiency grid, end "
                         "to end, train s/iter; CSVs, a plot and summary.txt with pass/fail")
    q.add_argument("--out", required=True, help="folder to write")
    q.add_argument("--quick", action="store_true", help="tiny network and map (CI: --device cpu --quick)")
    q.add_argument("--budget-s", type=float, default=330.0,
                   help="skip the sections that would start after this many seconds (n/a in the summary), "
                        "so the check ends near 6 minutes (default 330; 0: no limit)")
    add_device_argument(q, default="cuda")
    q.set_defaults(func=_cmd_gpu_check)
    q = kinds.add_parser("gpu-compile", parents=[common], help="compile every Triton kernel variant the GPU "
                         "runs build for a target GPU, here, without one (Triton's compiler and ptxas, "
                         "nothing launched): registers, spills, shared memory against the limit; CSVs and "
                         "summary.txt. The variants land in Triton's cache (TRITON_CACHE_DIR): a GPU run "
                         "with the same cache, Triton and lc loads them instead of compiling")
    q.add_argument("--out", required=True, help="folder to write")
    q.add_argument("--target", default="h100", choices=("h100", "h100-pcie", "a100"),
                   help="the GPU to compile for: h100 (sm_90, 132 SMs: H100 SXM, H200), h100-pcie (114 "
                        "SMs; tiles depend on the SM count) or a100 (sm_80) (default h100)")
    q.add_argument("--quick", action="store_true", help="tiny network and two buckets (CI)")
    q.set_defaults(func=_cmd_gpu_compile)
    q = kinds.add_parser("train", parents=[common], help="s/iter of a training step (forward, cascade loss, "
                         "backward, SGD) of dsn and lc at the paper's stage shares; AMP on CUDA; the first "
                         "(compiling) iteration apart")
    q.add_argument("--out", required=True, help="CSV to write")
    q.add_argument("--batch", type=positive_int, default=None, help="images per step (default 8)")
    q.add_argument("--crop", type=positive_int, default=None, help="crop side, a multiple of 8 (default 512)")
    q.add_argument("--iterations", type=positive_int, default=None,
                   help="steps per variant, the first reported apart (default 6, >= 2)")
    q.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too (default: bf16 autocast on CUDA)")
    q.add_argument("--quick", action="store_true",
                   help="tiny network, batch 1, crop 64, 2 iterations (CI: --device cpu --quick)")
    add_device_argument(q, default="auto", help_text="default auto: CUDA when usable")
    q.set_defaults(func=_cmd_bench_train)
    for kind, text in BENCH_HELP.items():
        q = kinds.add_parser(kind, parents=[common], help=text)
        q.add_argument("--out", required=True, help="CSV to write")
        q.add_argument("--checkpoint", default=None,
                       help="trained LC checkpoint: route with its masks on VOC val images (default, or "
                            "when the file is missing: masks with the paper's Table 1 stage shares)")
        if kind in ("models", "stages"):
            q.add_argument("--fast-checkpoint", default=None,
                           help="the LC model trained at evaluate.fast_rho (evaluate.sweep_retrain): LC fast "
                                "is routed with its masks (default: --checkpoint re-thresholded)")
        if kind == "rho":
            q.add_argument("--rho-checkpoint", type=_rho_checkpoint, action="append", default=None,
                           metavar="RHO=CKPT",
                           help="the LC model trained at RHO (evaluate.sweep_retrain; repeat per rho): that "
                                "rho is routed with its masks (default: --checkpoint re-thresholded)")
        add_device_argument(q)
        _add_repeats(q)
        q.set_defaults(func=_cmd_bench)
    q = kinds.add_parser("backbone", parents=[common],
                         help="LC across backbones: LC (--backbone's, routed by --checkpoint) vs the same "
                              "backbone dense, ms and FLOP-predicted speedup at every rho of backbones.rhos")
    q.add_argument("--out", required=True, help="CSV to write")
    q.add_argument("--checkpoint", required=True, help="the backbone's trained LC checkpoint (routing masks)")
    add_device_argument(q)
    _add_repeats(q)
    q.set_defaults(func=_cmd_bench_backbone)
