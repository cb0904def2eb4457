"""`lc <subcommand>`: the command line every Snakemake rule calls.

Each area registers its subcommands in its own `_add_*` function below; handlers import their
modules lazily so that `lc --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys


from lc.config import ConfigError, load_config


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.yaml", help="config file (default: config.yaml)")
    parser.add_argument("--preset", default=None, help="preset under presets: (default: config's preset)")


def _cfg(args: argparse.Namespace) -> dict:
    return load_config(args.config, preset=args.preset)


# --- config and published tables -------------------------------------------------------------
def _cmd_config(args: argparse.Namespace) -> None:
    import yaml

    print(yaml.safe_dump(_cfg(args), sort_keys=False))


def _add_config_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved (preset-merged, validated) config")
    _common(p)
    p.set_defaults(func=_cmd_config)


# --- data (issue: data) ----------------------------------------------------------------------
def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    pass


# --- models and ops (issue: foundation) ------------------------------------------------------
def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    pass


# --- training and evaluation (issue: engine) -------------------------------------------------
def _add_engine_commands(sub: argparse._SubParsersAction) -> None:
    pass


# --- benchmarks (issue: CUDA kernel and speed) -----------------------------------------------
def _add_bench_commands(sub: argparse._SubParsersAction) -> None:
    pass


# --- tables, figures, provenance (issue: DAG) ------------------------------------------------
def _add_report_commands(sub: argparse._SubParsersAction) -> None:
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_config_commands(sub)
    _add_data_commands(sub)
    _add_model_commands(sub)
    _add_engine_commands(sub)
    _add_bench_commands(sub)
    _add_report_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
