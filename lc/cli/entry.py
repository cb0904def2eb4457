"""The `lc` command's entry point (the console script and `python -m lc.cli`): what must happen
before anything slow is imported, then `lc.cli.main.main`.

`lc train --out DIR --no-resume` locks DIR and removes its old resume.pt, checkpoint.pt and
train_done.json here, within milliseconds of starting: importing the command groups (numpy,
pandas, matplotlib, torch) and reading the config take seconds on a busy machine, and a run killed
in those seconds must not leave the old model looking done. Standard library only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lc.training.run_folder import RunFolderLock, is_main_process, remove_state

__all__ = ["early_no_resume", "run"]


def early_no_resume(argv: list[str]) -> RunFolderLock | None:
    """For `train ... --out DIR --no-resume` (main process): the run folder's lock, held, after the
    old state was removed; None for anything else, or when this fails (the command itself then
    reports it, in `lc.cli.train`)."""
    if not argv or argv[0] != "train":
        return None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--out")
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true")
    known, _ = parser.parse_known_args(argv[1:])
    if not known.no_resume or not known.out or not is_main_process():
        return None
    try:
        lock = RunFolderLock(known.out).acquire()
    except (OSError, ValueError):
        return None
    try:
        removed = remove_state(Path(known.out))
    except OSError:
        lock.release()
        return None
    if not known.quiet:
        for path in removed:
            print(f"lc train: --no-resume: removed {path}", file=sys.stderr)
    return lock


def run(argv: list[str] | None = None) -> int:
    """The `lc` command: the early step above, then `lc.cli.main.main` (exit code)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    lock = early_no_resume(argv)
    try:
        from lc.cli.main import main

        return main(argv)
    finally:
        if lock is not None:
            lock.release()
