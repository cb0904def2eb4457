"""What every `lc` command shares: the common options, the argument types, logging, user errors."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

from lc.config import add_config_arguments, config_from_args, rho_arg
from lc.data.labels import NUM_CLASSES
from lc.device import DEVICE_CHOICES, DeviceError
from lc.models.variants import VARIANTS

__all__ = ["DATASETS", "DEVICE_CHOICES", "EVAL_SPLITS", "VARIANT_NAMES", "add_device_argument",
           "common_options", "config_with_region", "configure_logging", "is_user_error", "nonneg_int",
           "positive_int", "rho_arg", "user_error_message"]

# The choices of --dataset and --variant (neither module imports torch, so `lc --help` stays fast).
DATASETS = tuple(NUM_CLASSES)
VARIANT_NAMES = tuple(VARIANTS)
EVAL_SPLITS = ("train", "val", "test")  # prepared splits a checkpoint can be scored or exported on

_HANDLER_FLAG = "_lc_cli_handler"
# a read-only file system or missing permissions: the user's to fix, named by `user_error_message`
_ACCESS_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # lc/


def common_options() -> argparse.ArgumentParser:
    """The parent parser of every command: --config, --preset, --verbose, --quiet."""
    parent = argparse.ArgumentParser(add_help=False)
    add_config_arguments(parent)
    noise = parent.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_const", const=1, default=0, dest="verbosity",
                       help="also log debug messages")
    noise.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity",
                       help="log warnings and errors only")
    return parent


def config_with_region(args: argparse.Namespace) -> dict:
    """`config_from_args`, with the config's `region` block (planned path, buckets, CUDA graphs)
    applied to this process: what every command that runs a routed model loads."""
    from lc.models.region_irnet import apply_region_config  # imports torch: not at `lc --help`

    cfg = config_from_args(args)
    apply_region_config(cfg)
    return cfg


def add_device_argument(parser: argparse.ArgumentParser, choices=DEVICE_CHOICES, default=None,
                        help_text: str = "default: the config's `device:`") -> None:
    """--device with its choices; `cuda` fails with the reason when CUDA is not usable."""
    parser.add_argument("--device", default=default, choices=list(choices),
                        help=f"{' | '.join(choices)} ({help_text}; cuda never falls back to the CPU)")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


positive_int = _int_at_least(1)
nonneg_int = _int_at_least(0)


def configure_logging(verbosity: int = 0, stream=None) -> None:
    """Log the `lc` package's messages to stderr: -1 warnings, 0 info, 1 debug.

    On a terminal the lines are short; otherwise (Snakemake log files, batch jobs) each line carries
    the time, level and logger, plain text without progress-bar control characters.
    """
    stream = stream or sys.stderr
    logger = logging.getLogger("lc")
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_FLAG, False)]:
        logger.removeHandler(handler)  # main() may run several times in one process (tests)
    handler = logging.StreamHandler(stream)
    setattr(handler, _HANDLER_FLAG, True)
    if getattr(stream, "isatty", lambda: False)():
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               datefmt="%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[max(-1, min(1, verbosity))])


def _raised_by_lc(exc: BaseException) -> bool:
    """Whether the innermost frame of the traceback is this package's code (not torch's, numpy's...)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def is_user_error(exc: BaseException) -> bool:
    """Errors whose message is the whole story (bad config, missing input, no GPU...): no traceback.

    Library errors that mean "fix your input" derive from ValueError (ConfigError, CheckpointError,
    UnsafeArchiveError...) or are listed here. A plain ValueError counts when lc raised it (its
    checks of inputs), not when torch or numpy did (a bug). Anything else keeps its traceback.
    """
    if type(exc) is ValueError:
        return _raised_by_lc(exc)
    if isinstance(exc, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, DeviceError)):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, *_ACCESS_ERRNOS):
        return True
    errors = sys.modules.get("lc.data.errors")  # only loaded when a command touched data
    return errors is not None and isinstance(exc, errors.DataError)


def user_error_message(exc: BaseException) -> str:
    """The one line printed for a user error: the exception's own message, or for a file system that
    refuses a write (read-only, no permission) the file, the reason and the fix."""
    if isinstance(exc, OSError) and exc.errno in _ACCESS_ERRNOS:
        where = exc.filename or "a file"
        return (f"cannot write {where}: {exc.strerror or errno.errorcode.get(exc.errno)}; make that folder "
                "writable (or mount it read-write), or write elsewhere (--out, results_root, data.root)")
    return str(exc)
