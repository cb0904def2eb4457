"""`lc <subcommand>`: the command line every Snakemake rule calls.

Each area registers its subcommands in its own `_add_*` function (training and evaluation in
lc/cli_engine.py); handlers import their modules lazily so that `lc --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lc.cli.engine import add_engine_commands
from lc.config import ConfigError, add_config_arguments, config_from_args, load_config


# --- config and published tables -------------------------------------------------------------
def _cmd_config(args: argparse.Namespace) -> None:
    import yaml

    print(yaml.safe_dump(config_from_args(args), sort_keys=False))


def _add_config_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved (preset-merged, validated) config")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_config)


# --- data ----------------------------------------------------------------------------------
def _cmd_synth(args: argparse.Namespace) -> None:
    from lc.data.synthetic import make_synthetic_mirror

    cfg = config_from_args(args)
    for name, md5 in make_synthetic_mirror(cfg).items():
        print(f"{md5}  {cfg['data']['mirror']}/{name}")


def _cmd_download(args: argparse.Namespace) -> None:
    from lc.data.download import DownloadError, fetch_archive

    try:
        fetch_archive(config_from_args(args), args.key, args.out)
    except DownloadError as exc:
        raise SystemExit(f"lc download: error: {exc}") from exc


def _cmd_prepare(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    if args.dataset == "voc":
        from lc.data.voc import prepare_voc as prepare
    else:
        from lc.data.cityscapes import prepare_cityscapes as prepare
    for split, path in prepare(cfg).items():
        print(f"{split}: {path}")


def _cmd_weights(args: argparse.Namespace) -> None:
    from lc.data.weights import fetch_weights

    print(fetch_weights(config_from_args(args)))


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="fetch timm's ImageNet inception_resnet_v2 weights (SHA-256 verified) "
                                       "into <data.root>/weights/")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_weights)
    p = sub.add_parser("synth", help="demo/test presets: write synthetic archives + MD5SUMS into data.mirror")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_synth)
    p = sub.add_parser("download", help="fetch one archive of data.archives, MD5-verified (resumes, retries)")
    add_config_arguments(p)
    p.add_argument("key", help="archive key under data.archives (e.g. voc2012_trainval, sbd)")
    p.add_argument("--out", default=None, help="target file (default: <data.root>/archives/<filename>)")
    p.set_defaults(func=_cmd_download)
    p = sub.add_parser("prepare", help="extract the archives and write the prepared labels and split lists")
    add_config_arguments(p)
    p.add_argument("dataset", choices=["voc", "cityscapes"])
    p.set_defaults(func=_cmd_prepare)


# --- models and ops ----------------------------------------------------------------------
def _cmd_model_info(args: argparse.Namespace) -> None:
    import pandas as pd

    from lc.data import NUM_CLASSES
    from lc.data.io import atomic_path
    from lc.models.complexity import FULL_SIZE_BLOCK_COUNTS, model_info_rows, predicted_cost
    from lc.report.paper import load_paper_table

    cfg = config_from_args(args)
    paper_cfg = load_config(args.config, preset="paper")  # full size = the paper preset's model
    table = pd.DataFrame(model_info_rows(cfg["model"], paper_cfg["model"], NUM_CLASSES["voc"],
                                         cfg["bench"]["image_size"], paper_cfg["bench"]["image_size"]))
    table.insert(0, "preset", cfg["preset"])
    published = load_paper_table(6).drop_duplicates("method").set_index("method")["params_m"]
    table["paper_params_m"] = [published.get(net) if stage == "total" and net in published else None
                               for net, stage in zip(table["network"], table["stage"], strict=True)]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.drop(columns=["preset"]).to_string(index=False, float_format="{:.4g}".format))

    # What region convolution could save at the paper's own routing (Table 1 shares)
    sweep = load_paper_table(1)
    for counts in FULL_SIZE_BLOCK_COUNTS:
        rows = table[(table["network"] == "IRNet-LC") & (table["block_counts"] == "/".join(map(str, counts)))]
        flops = rows[rows["stage"] != "total"]["gflops"].tolist()
        for rho in (cfg["evaluate"]["rho"], cfg["evaluate"]["fast_rho"]):
            matches = sweep[(sweep["rho"] - rho).abs() < 1e-9]
            if matches.empty:
                continue  # the paper reports shares for its Table 1 thresholds only
            share = matches.iloc[0]
            passed2 = 1 - share["stage1_pct"] / 100
            passed3 = passed2 - share["stage2_pct"] / 100
            cost = predicted_cost(flops, [1.0, passed2, passed3])
            print(f"IRNet-LC {'/'.join(map(str, counts))} at the paper's rho={rho} shares "
                  f"(stage 2 {passed2:.0%}, stage 3 {passed3:.0%}): {cost['flops']:.1f} of "
                  f"{cost['dense_flops']:.1f} GFLOPs, predicted speedup x{cost['speedup']:.2f}")
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
        print(f"wrote {args.out}")


def _cmd_bench_op(args: argparse.Namespace) -> None:
    from lc.bench.op import run_op_bench, save_op_bench

    devices = None if args.device == "all" else [args.device]
    df = run_op_bench(config_from_args(args), devices=devices, warmup=args.warmup, runs=args.runs,
                      threads=args.threads)
    save_op_bench(df, args.out, args.png)
    print(df.to_string(index=False, float_format="{:.3f}".format))
    print(f"wrote {args.out}")


def _add_bench_op_parser(sub: argparse._SubParsersAction, name: str) -> None:
    """`lc bench-op` (and, registered by the bench area, `lc bench op`)."""
    p = sub.add_parser(name, help="region conv speed: full-width IRNet stage 2 and single convs, "
                                  "dense vs masked vs compressed, over active fractions")
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="CSV to write (a PNG plot goes beside it)")
    p.add_argument("--png", default=None, help="plot path (default: the CSV path with .png)")
    p.add_argument("--device", default="all", choices=["all", "cpu", "cuda"],
                   help="all: the CPU, plus CUDA when present")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default: bench.warmup)")
    p.add_argument("--runs", type=int, default=None, help="timed runs (default: bench.runs)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, as in the CPU target)")
    p.set_defaults(func=_cmd_bench_op)


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    _add_bench_op_parser(sub, "bench-op")
    p = sub.add_parser("model-info", help="parameters and GFLOPs per stage (configured and full-size "
                                          "IRNet-LC, DeepLab-v2, SegNet) beside the paper's")
    add_config_arguments(p)
    p.add_argument("--out", default=None, help="also write the table to this CSV")
    p.set_defaults(func=_cmd_model_info)


# --- benchmarks -----------------------------------------------------------------------
def _print_speedups(df) -> None:
    """Measured vs FLOP-predicted speedup of each network over dense IRNet (Table 3's claim)."""
    for row in df.to_dict("records"):
        if row["method"] not in ("lc", "lc_fast"):
            continue
        print(f"{row['method']:>10} rho={row['rho']:<6g} speedup over dense IRNet: measured "
              f"x{row['speedup_vs_irnet']:.2f}, FLOP-predicted x{row['predicted_speedup_vs_irnet']:.2f} "
              f"(ratio {row['speedup_vs_irnet'] / row['predicted_speedup_vs_irnet']:.2f}; "
              f"target on GPU >= 0.9)")


def _cmd_bench(args: argparse.Namespace) -> None:
    import pandas as pd

    from lc.bench.models import BenchSetup, run_models_bench, run_rho_bench, run_stages_bench
    from lc.bench.table6 import run_table6_bench
    from lc.bench.timing import write_csv

    cfg = config_from_args(args)
    full_model_cfg = load_config(args.config, preset="paper")["model"]  # full size = the paper's model
    setup = BenchSetup.from_config(cfg, full_model_cfg, checkpoint=args.checkpoint, device=args.device,
                                   warmup=args.warmup, runs=args.runs)
    run = {"models": run_models_bench, "stages": run_stages_bench, "rho": run_rho_bench,
           "table6": run_table6_bench}[args.kind]
    df = run(setup)
    write_csv(df, args.out)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.to_string(index=False, float_format="{:.4g}".format))
    if args.kind == "models":
        _print_speedups(df)
    print(f"wrote {args.out}")


def _add_bench_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed benchmarks: op (region conv), models (Table 3), stages "
                                     "(Fig. 7b), rho (Fig. 7a), table6 (Table 6 FPS)")
    kinds = p.add_subparsers(dest="kind", required=True)
    _add_bench_op_parser(kinds, "op")
    helps = {"models": "ms and FPS of bench.models (DeepLab-v2, SegNet, dense IRNet, LC, LC fast)",
             "stages": "ms per stage of LC at evaluate.rho and fast_rho, and of dense IRNet",
             "rho": "LC's ms per image at every rho of evaluate.rho_sweep",
             "table6": "LC's FPS single scale, multi-scale + flip, and multi-scale + dense CRF"}
    for kind, text in helps.items():
        q = kinds.add_parser(kind, help=text)
        add_config_arguments(q)
        q.add_argument("--out", required=True, help="CSV to write")
        q.add_argument("--checkpoint", default=None,
                       help="trained LC checkpoint: route with its masks on VOC val images (default, or "
                            "when the file is missing: masks with the paper's Table 1 stage shares)")
        q.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                       help="default: the config's `device:`")
        q.add_argument("--warmup", type=int, default=None, help="warm-up runs (default: bench.warmup)")
        q.add_argument("--runs", type=int, default=None, help="timed runs (default: bench.runs)")
        q.set_defaults(func=_cmd_bench, kind=kind)


# --- tables, figures, provenance ------------------------------------------------------
def _cmd_tables(args: argparse.Namespace) -> None:
    from lc.config import results_dir
    from lc.report.tables import render_markdown, write_tables

    cfg = config_from_args(args)
    numbers = args.table or ([] if args.markdown else list(range(1, 7)))
    for path in write_tables(cfg, args.out_dir, results_dir(cfg), numbers):
        print(f"wrote {path}")
    if args.markdown or not args.table:
        print(f"wrote {render_markdown(args.out_dir, cfg['preset'])}")


def _cmd_figures(args: argparse.Namespace) -> None:
    from lc.config import results_dir
    from lc.report.figures import FIGURES, make_figure, missing_inputs

    cfg = config_from_args(args)
    for name in args.figure or list(FIGURES):
        missing = missing_inputs(name, results_dir(cfg))
        if missing and not args.figure:  # "all figures": draw those whose inputs exist
            print(f"skipped {name}: missing {', '.join(map(str, missing))}")
            continue
        for path in make_figure(name, cfg, results_dir(cfg), args.out_dir):
            print(f"wrote {path}")


def _cmd_provenance(args: argparse.Namespace) -> None:
    from lc.report.provenance import write_provenance

    print(f"wrote {write_provenance(config_from_args(args), args.out)}")


def _add_report_commands(sub: argparse._SubParsersAction) -> None:
    from lc.report.figures import FIGURES

    p = sub.add_parser("tables", help="Tables 1-6 (ours beside the paper's) as CSV, and tables.md")
    add_config_arguments(p)
    p.add_argument("--out-dir", required=True, help="folder for table<n>_*.csv and tables.md")
    p.add_argument("--table", type=int, action="append", choices=range(1, 7),
                   help="build only this table (repeatable); default: all six and tables.md")
    p.add_argument("--markdown", action="store_true", help="(re)write tables.md from the CSVs in --out-dir")
    p.set_defaults(func=_cmd_tables)

    p = sub.add_parser("figures", help="the paper's figures from this run's outputs (PNG and PDF)")
    add_config_arguments(p)
    p.add_argument("--out-dir", required=True, help="folder for <figure>.png and <figure>.pdf")
    p.add_argument("--figure", action="append", choices=list(FIGURES),
                   help="make only this figure (repeatable); default: all")
    p.set_defaults(func=_cmd_figures)

    p = sub.add_parser("provenance", help="git commit, config hash, package versions, device, time")
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.set_defaults(func=_cmd_provenance)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_config_commands(sub)
    _add_data_commands(sub)
    _add_model_commands(sub)
    add_engine_commands(sub)
    _add_bench_commands(sub)
    _add_report_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:  # library modules log through `logging`
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.func(args)
    except ConfigError as exc:
        print(f"lc: config error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"lc: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["build_parser", "main"]
