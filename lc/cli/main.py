"""`lc <command>`: the command line every Snakemake rule calls.

One module per command group registers its commands (argument parsing only; each command calls one
library function): lc.cli.data (config, synth, download, prepare), lc.cli.train (train),
lc.cli.evaluate (evaluate, sweep, export, analyze), lc.cli.bench (bench
op|models|stages|rho|table6|gpu-check|gpu-compile|train|backbone, model-info), lc.cli.report
(tables, figures, provenance). Handlers import the library lazily so that `lc --help` stays fast.

A user error (bad config, missing input, corrupt checkpoint...) ends with one `lc <command>: error: ...`
line and exit code 2; an unusable device (`--device cuda` where CUDA is not usable) the same way
with exit code 3, which a retry on the same node cannot fix; `lc train` stopped by a signal or a
time limit exits 75 after writing resume.pt (lc.training.preempt): run it again to resume. Anything
else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lc.cli import bench, data, evaluate, report, train
from lc.cli.common import common_options, configure_logging, is_user_error, user_error_message
from lc.device import DeviceError

log = logging.getLogger("lc.cli")
EXIT_USER_ERROR = 2  # as argparse's own usage errors
EXIT_NO_DEVICE = 3  # the requested device (CUDA) is not usable on this machine: not worth a retry here
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The `lc` parser with every command group registered."""
    parser = argparse.ArgumentParser(prog="lc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options()
    for group in (data, train, evaluate, bench, report):
        group.register(sub, common)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    return " ".join(filter(None, ["lc", args.command, getattr(args, "kind", None)]))


def main(argv: list[str] | None = None) -> int:
    """Run one `lc` command; the exit code (0 done, 2 user error, 3 device unusable, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbosity)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"{_command_name(args)}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not is_user_error(exc):
            raise
        log.debug("user error", exc_info=True)  # the traceback under --verbose
        print(f"{_command_name(args)}: error: {user_error_message(exc)}", file=sys.stderr)
        return EXIT_NO_DEVICE if isinstance(exc, DeviceError) else EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["build_parser", "main"]
