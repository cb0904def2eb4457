"""`lc tables | figures | provenance`: the report of a run."""

from __future__ import annotations

import argparse

from lc.config import config_from_args, results_dir

TABLE_NUMBERS = range(1, 7)


def _cmd_tables(args: argparse.Namespace) -> None:
    from lc.report.tables import render_markdown, write_tables

    cfg = config_from_args(args)
    numbers = args.table or ([] if args.markdown else list(TABLE_NUMBERS))
    for path in write_tables(cfg, args.out_dir, results_dir(cfg), numbers):
        print(f"wrote {path}")
    if args.markdown or not args.table:
        print(f"wrote {render_markdown(args.out_dir, cfg['preset'])}")


def _cmd_figures(args: argparse.Namespace) -> None:
    from lc.report.figures import FIGURES, make_figure, missing_inputs

    cfg = config_from_args(args)
    for name in args.figure or list(FIGURES):
        missing = missing_inputs(name, results_dir(cfg))
        if missing and not args.figure:  # "all figures": draw those whose inputs exist
            print(f"skipped {name}: missing {', '.join(map(str, missing))}")
            continue
        for path in make_figure(name, cfg, results_dir(cfg), args.out_dir):
            print(f"wrote {path}")


def _cmd_backbones(args: argparse.Namespace) -> None:
    from lc.report.backbones import write_backbones_outputs

    cfg = config_from_args(args)
    for path in write_backbones_outputs(cfg, results_dir(cfg)):
        print(f"wrote {path}")


def _cmd_provenance(args: argparse.Namespace) -> None:
    from lc.report.provenance import write_provenance

    print(f"wrote {write_provenance(config_from_args(args), args.out)}")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from lc.report.figures import FIGURES

    p = sub.add_parser("tables", parents=[common],
                       help="Tables 1-6 (ours beside the paper's) as CSV, and tables.md")
    p.add_argument("--out-dir", required=True, help="folder for table<n>_*.csv and tables.md")
    p.add_argument("--table", type=int, action="append", choices=TABLE_NUMBERS,
                   help="build only this table (repeatable); default: all six and tables.md")
    p.add_argument("--markdown", action="store_true", help="(re)write tables.md from the CSVs in --out-dir")
    p.set_defaults(func=_cmd_tables)

    p = sub.add_parser("figures", parents=[common],
                       help="the paper's figures from this run's outputs (PNG and PDF)")
    p.add_argument("--out-dir", required=True, help="folder for <figure>.png and <figure>.pdf")
    p.add_argument("--figure", action="append", choices=list(FIGURES),
                   help="make only this figure (repeatable); default: all")
    p.set_defaults(func=_cmd_figures)

    p = sub.add_parser("backbones-table", parents=[common],
                       help="LC across backbones (ours): tables/backbones.csv and .md, and its figure")
    p.set_defaults(func=_cmd_backbones)

    p = sub.add_parser("provenance", parents=[common],
                       help="git commit, config hash, package versions, device, time")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.set_defaults(func=_cmd_provenance)
